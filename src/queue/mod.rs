//! Stage 2½: the queue. In queue mode every accepted message is on the spool before the
//! client hears `250`; the [`Scheduler`] hands it to delivery, retries with back-off,
//! bounces (RFC 3464, [`bounce`]) after `max_queue_lifetime` or a permanent refusal,
//! keeps delivery outcomes the spool cannot record yet, refuses new mail while the disk
//! is full, and carries out the `queue` command's requests. In passthrough mode the
//! [`Passthrough`] hand-off delivers at once and queues only the leftovers. [`drain`]
//! hands the whole queue to another relay (`queue drain`, for scale-down).
//!
//! The queue calls delivery ([`crate::deliver::Deliverer`]); delivery never calls the queue.

pub mod bounce;
pub mod drain;
pub mod passthrough;
pub mod scheduler;

pub use passthrough::Passthrough;
pub use scheduler::{QueueSummary, Scheduler, Settings, deferral_kind};
