//! What the storage hardware says: md RAID arrays, the data volume, and SMART.
