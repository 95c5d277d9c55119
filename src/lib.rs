//! bucketfs: an S3 bucket as a directory. Layers, one way: FUSE request (`fuse`) →
//! filesystem logic (`fs`) → caches and buffers (`cache`, `prefetch`, `upload`, `budget`)
//! → object store (`store`) → S3. Pure rules live in `keys`, `meta` and `config`.

pub mod authentik;
pub mod bucket;
pub mod budget;
pub mod cache;
pub mod config;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod keys;
pub mod meta;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod prefetch;
pub mod service;
pub mod sigv2;
pub mod staging;
pub mod store;
pub mod upload;
