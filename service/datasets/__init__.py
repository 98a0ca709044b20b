"""HTTP for datasets: upload, list, read, delete, and presigned multipart uploads."""
