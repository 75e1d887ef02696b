//! A session's identity and method list, carried in its `X-Docker-Expose-Session-*` headers,
//! and the one change the splice makes to them on the way to the daemon.

use http::HeaderValue;

use crate::observe::{Caller, Peer};
use crate::wire::proto::GET_SECRET_PATH;

/// Session headers as gRPC metadata (lower-cased by BuildKit's client).
pub const SESSION_UUID: &str = "x-docker-expose-session-uuid";
/// One value per method the client's session serves.
pub const SESSION_METHOD: &str = "x-docker-expose-session-grpc-method";

/// What the splice knows of a session, from its `X-Docker-Expose-Session-*` headers.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    /// The session id (`X-Docker-Expose-Session-Uuid`); kept as is upstream.
    pub id: String,
    /// The methods the client serves (`X-Docker-Expose-Session-Grpc-Method`).
    pub client_methods: Vec<String>,
    /// The process on the other end of the helper's socket.
    pub peer: Option<Peer>,
}

impl SessionInfo {
    /// The session as the audit trail names it.
    pub fn caller(&self) -> Caller {
        Caller {
            session: Some(self.id.clone()),
            peer: self.peer,
            probe: false,
        }
    }
}

impl SessionInfo {
    /// True when the client serves secrets itself (it was given `--secret`).
    pub fn client_serves_secrets(&self) -> bool {
        self.client_methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(GET_SECRET_PATH))
    }
}

/// Adds GetSecret to the method list the daemon sees when the client does not serve it: both
/// front doors re-originate sessions with it.
pub fn advertise_secrets(headers: &mut http::HeaderMap, info: &SessionInfo) {
    if !info.client_serves_secrets() {
        headers.append(SESSION_METHOD, HeaderValue::from_static(GET_SECRET_PATH));
    }
}

/// The session's id and method list, from the call's metadata.
pub fn session_info(headers: &http::HeaderMap, peer: Option<Peer>) -> SessionInfo {
    SessionInfo {
        peer,
        id: headers
            .get(SESSION_UUID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        client_methods: headers
            .get_all(SESSION_METHOD)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    fn headers(methods: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SESSION_UUID, HeaderValue::from_static("abc123"));
        for m in methods {
            h.append(SESSION_METHOD, HeaderValue::from_str(m).unwrap());
        }
        h
    }

    #[test]
    fn a_session_is_read_from_its_headers() {
        let peer = Peer {
            pid: Some(7),
            uid: 1000,
            gid: 1000,
        };
        let info = session_info(&headers(&["/a.B/C", GET_SECRET_PATH]), Some(peer));
        assert_eq!(info.id, "abc123");
        assert_eq!(info.client_methods, ["/a.B/C", GET_SECRET_PATH]);
        assert!(info.client_serves_secrets());
        let caller = info.caller();
        assert_eq!(caller.session.as_deref(), Some("abc123"));
        assert_eq!(caller.peer, Some(peer));
        assert!(!caller.probe);
    }

    #[test]
    fn get_secret_is_advertised_once_and_only_when_the_client_lacks_it() {
        let mut h = headers(&["/moby.filesync.v1.FileSync/DiffCopy"]);
        let info = session_info(&h, None);
        assert!(!info.client_serves_secrets());
        advertise_secrets(&mut h, &info);
        let after = session_info(&h, None);
        assert_eq!(
            after.client_methods,
            ["/moby.filesync.v1.FileSync/DiffCopy", GET_SECRET_PATH]
        );

        let mut own = headers(&[&GET_SECRET_PATH.to_ascii_lowercase()]);
        let info = session_info(&own, None);
        assert!(
            info.client_serves_secrets(),
            "method names compare without case"
        );
        advertise_secrets(&mut own, &info);
        assert_eq!(own.get_all(SESSION_METHOD).iter().count(), 1);
    }

    #[test]
    fn a_session_without_headers_has_an_empty_id() {
        let info = session_info(&HeaderMap::new(), None);
        assert_eq!(info.id, "");
        assert!(info.client_methods.is_empty());
    }
}
