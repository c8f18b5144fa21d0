//! Membership changes at run time (`POST /v1/members`, `scribe members add|remove`): the Raft
//! leader records the change in the control state and in the Raft group
//! ([`ControlPlane::add_member`](crate::control::ControlPlane::add_member),
//! [`ControlPlane::remove_member`](crate::control::ControlPlane::remove_member)); any other
//! member forwards the request to it. A new member is started first with `scribe node --join
//! URL` (it learns the cluster from that member and asks to be added itself); it is then
//! seeded with a snapshot and follows the primary like any replica.

use std::time::Duration;

use scribe_core::Member;
use serde::{Deserialize, Serialize};

use crate::control::MembershipError;
use crate::state::NodeState;
use crate::ApiError;

/// How long a new member may take to catch up with the control log before the add is undone.
pub const CATCH_UP: Duration = Duration::from_secs(15);

/// `POST /v1/members`: exactly one of `add` and `remove`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MembersRequest {
    /// A member to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<NewMember>,
    /// The name of a member to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<String>,
}

/// A member to add.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// Its name (`--name`).
    pub name: String,
    /// Its peer address, as the other members reach it.
    pub peer_addr: String,
    /// Whether it is a witness (votes, holds no data).
    #[serde(default)]
    pub witness: bool,
}

/// The answer: the members after the change.
#[derive(Debug, Serialize)]
pub struct MembersResponse {
    /// What was done.
    pub done: String,
    /// The members now, by name.
    pub members: Vec<String>,
}

/// What the request asks of this node.
pub enum Route {
    /// This node leads the control plane: carry it out here.
    Here,
    /// Forward it to the leader `(name, http_url)`.
    Leader(String, String),
}

/// Where `/v1/members` is carried out.
pub fn route(state: &NodeState) -> Result<Route, ApiError> {
    let Some(plane) = &state.control else {
        return Err(refused(
            "membership changes need cluster mode (--cluster): this node's replicas are fixed by their --follow",
        ));
    };
    let leader = plane.leader_name();
    match leader {
        Some(l) if l == state.identity.name => Ok(Route::Here),
        Some(l) => {
            let url = plane
                .state()
                .borrow()
                .members
                .get(&l)
                .and_then(|m| m.http_url.clone());
            match url {
                Some(url) => Ok(Route::Leader(l, url)),
                None => Err(ApiError::Forward(format!(
                    "the control plane's leader {l} has not announced its HTTP URL yet; retry shortly"
                ))),
            }
        }
        None => Err(ApiError::Forward(
            "the control plane has no leader right now; retry shortly".into(),
        )),
    }
}

fn refused(why: impl Into<String>) -> ApiError {
    ApiError::Membership(why.into())
}

/// Carries out `req` on this node, the Raft leader.
pub async fn run(state: &NodeState, req: &MembersRequest) -> Result<MembersResponse, ApiError> {
    let Some(plane) = &state.control else {
        return Err(refused("membership changes need cluster mode (--cluster)"));
    };
    let done = match (&req.add, &req.remove) {
        (Some(m), None) => {
            scribe_core::check_node_name(&m.name).map_err(|e| refused(e.to_string()))?;
            if !m.peer_addr.contains(':') {
                return Err(refused(format!(
                    "{:?} must be the member's peer address, HOST:PORT",
                    m.peer_addr
                )));
            }
            let member = Member {
                name: m.name.clone(),
                peer_addr: m.peer_addr.clone(),
                http_url: None,
                witness: m.witness,
            };
            plane
                .add_member(member, CATCH_UP)
                .await
                .map_err(membership_error)?;
            tracing::warn!(name = %m.name, peer = %m.peer_addr, witness = m.witness, "added a member to the cluster");
            format!("added {} ({})", m.name, m.peer_addr)
        }
        (None, Some(name)) => {
            plane.remove_member(name).await.map_err(membership_error)?;
            tracing::warn!(%name, "removed a member from the cluster");
            format!("removed {name}; stop its process")
        }
        _ => {
            return Err(ApiError::BadJson(
                "give exactly one of \"add\": {\"name\", \"peer_addr\"} and \"remove\": NAME"
                    .into(),
            ))
        }
    };
    let members = plane.state().borrow().members.keys().cloned().collect();
    Ok(MembersResponse { done, members })
}

fn membership_error(e: MembershipError) -> ApiError {
    match e {
        MembershipError::Refused(why) => refused(why),
        MembershipError::NotLeader { leader } => ApiError::Forward(format!(
            "the control plane's leadership moved (now {}) while the request was on its way; retry",
            leader.as_deref().unwrap_or("unknown")
        )),
        MembershipError::Unavailable(why) => ApiError::Forward(why),
    }
}
