//! Load-balancer checks on the agent port (see [`crate::peer`]).

use axum::Router;

use crate::peer::PeerState;

/// The check routes.
pub fn router() -> Router<PeerState> {
    Router::new()
}
