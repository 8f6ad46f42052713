//! C-FIND matching and retrieval resolution over a real index.
