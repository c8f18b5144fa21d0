//! [`NodeHttp`]: the HTTP client a node calls other nodes with — forwarding a client's request
//! to the primary, asking members for their positions, joining a cluster. With `--users` every
//! call carries a signed assertion ([`crate::auth::ASSERTION_HEADER`]) of who it is made for: the
//! client whose request is forwarded (so the primary applies that client's role, not the
//! node's), or the node itself for its own calls (role `admin`).

use reqwest::{Method, RequestBuilder};

use crate::auth::{Principal, Role, INTERNAL_USER};
use crate::NodeConfig;

/// The node's client for calls to other nodes.
#[derive(Clone, Debug)]
pub struct NodeHttp {
    client: reqwest::Client,
    /// The key assertions are signed with; `None` without `--users`.
    key: Option<[u8; 32]>,
}

impl NodeHttp {
    /// The client, trusting the `--tls-ca` certificates for `https://` nodes.
    pub fn new(config: &NodeConfig) -> Result<NodeHttp, String> {
        // No redirects and no proxy from the environment: an assertion goes to the node
        // addressed, nowhere else.
        let mut builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(ca) = &config.tls_ca {
            for cert in crate::tls::ca_certificates(ca)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("build the HTTP client for calls to other nodes: {e}"))?;
        Ok(NodeHttp {
            client,
            key: crate::auth::forward_key(config),
        })
    }

    /// A request the node makes for itself, needing `role` at most (a read of another node's
    /// status summary asks for `read`, adding itself to a cluster `admin`).
    pub fn request(&self, method: Method, url: &str, role: Role) -> RequestBuilder {
        let node = Principal {
            name: INTERNAL_USER.to_string(),
            role,
        };
        self.request_for(method, url, Some(&node))
    }

    /// A request made for `who` (the client whose request is forwarded). With `--users` and no
    /// principal (a route open to anyone), no assertion: the other node sees no credentials.
    pub fn request_for(
        &self,
        method: Method,
        url: &str,
        who: Option<&Principal>,
    ) -> RequestBuilder {
        let (Some(key), Some(p)) = (&self.key, who) else {
            return self.client.request(method, url);
        };
        // Made for this one request: its method and path. A URL that does not parse goes as
        // it is, unsigned, and fails in reqwest as it would have.
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return self.client.request(method, url);
        };
        let asked = crate::auth::Asked {
            method: method.as_str(),
            path: parsed.path(),
        };
        let assertion =
            crate::auth::make_assertion(key, &p.name, p.role, asked, crate::auth::now_unix());
        self.client
            .request(method, parsed)
            .header(crate::auth::ASSERTION_HEADER, assertion)
    }
}
