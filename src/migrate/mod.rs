//! `bucketfs migrate SRC DST`: copy a local directory to `s3://bucket[/prefix]` or back, in
//! the mount's layout (path `<p>` ↔ key `<prefix><p>`), verified, resumable, in parallel.
//! `copy` moves one item (also used by the live copier); `plan` decides per item (pure);
//! `offline` walks both sides, runs the plan and reports.

pub mod copy;
pub mod live;
pub mod plan;
