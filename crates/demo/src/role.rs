//! The roles tandem hands to an instance: tandem-core's own [`Role`], so
//! the demo component and tandem spell them the same way.

pub use tandem_core::model::{Role, UnknownRole};
