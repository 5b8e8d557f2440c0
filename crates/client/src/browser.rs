//! The browser side of a two-site deployment: `tandem-site.js`, a plain
//! JavaScript library (no build step, no dependencies) that a web page
//! loads to fail over between two sites by itself, re-authenticated at the
//! backup site with a token both sites accept. Its API is documented at the
//! top of the file; `tandem demo-desk` serves it and shows it at work.

/// The text of `tandem-site.js`, for a server to serve as
/// `application/javascript` (it defines `window.TandemSite`).
pub const SITE_JS: &str = include_str!("../assets/tandem-site.js");
