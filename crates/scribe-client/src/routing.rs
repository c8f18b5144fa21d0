//! [`Router`]: the shared engine behind [`Cluster`](crate::Cluster) and
//! [`Session`](crate::Session). It owns the picture of the cluster (discovered from the nodes'
//! status, refreshed in the background and on failures), sends writes to the primary and reads to
//! the replicas, and carries the position token it is given. The decisions it applies live in
//! [`crate::topology`] and [`crate::retry`]; this module does the I/O.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use scribe_core::Position;
use serde_json::json;

use crate::answer::{self, Executed, Rows};
use crate::error::Error;
use crate::options::Options;
use crate::retry::{self, ReadNext, WriteNext};
use crate::statement::{CommitMode, Consistency, Statement};
use crate::token::Token;
use crate::topology::{normalize, Answer, Topology};
use crate::transport::{self, Delivery};
use crate::value::Params;

/// Rounds of discovery: given URLs, then the nodes they name, then the nodes those name.
const DISCOVERY_ROUNDS: usize = 3;

/// The picture of the cluster and when it was taken.
///
/// Invariant: `generation` grows by one at every discovery, successful or not.
struct View {
    topology: Topology,
    generation: u64,
    discovered_at: Instant,
}

/// The engine behind a cluster handle and its sessions.
pub(crate) struct Router {
    http: reqwest::Client,
    pub(crate) options: Options,
    /// The URLs the caller gave, asked at every discovery.
    seeds: Vec<String>,
    view: Mutex<View>,
    /// One discovery at a time.
    discovery: Arc<tokio::sync::Mutex<()>>,
}

/// Checks and normalizes the URLs a caller gave.
pub(crate) fn seed_urls<I, S>(urls: I) -> Result<Vec<String>, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = Vec::new();
    for u in urls {
        let url = normalize(u.as_ref());
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| Error::Usage(format!("node URL {url:?} does not parse: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(Error::Usage(format!(
                "node URL {url:?} is not an http:// or https:// URL with a host"
            )));
        }
        if !out.contains(&url) {
            out.push(url);
        }
    }
    if out.is_empty() {
        return Err(Error::Usage("no node URL given".to_string()));
    }
    Ok(out)
}

/// A duration as the API reads it: whole milliseconds, at least one when not zero.
pub(crate) fn api_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let ms = if ms == 0 && !d.is_zero() { 1 } else { ms };
    format!("{ms}ms")
}

/// The body of `/v1/execute`: sent with `"forward": false`, so that a node that is no longer the
/// primary refuses it (`not_primary`) and the client rediscovers, instead of a second hop whose
/// failure would leave the outcome unknown.
pub(crate) fn execute_body(
    statements: &[Statement],
    commit: Option<CommitMode>,
) -> Result<serde_json::Value, Error> {
    let statements = statements
        .iter()
        .map(Statement::to_json)
        .collect::<Result<Vec<_>, _>>()?;
    let mut body = json!({ "statements": statements, "forward": false });
    if let Some(mode) = commit {
        body["commit"] = json!(mode.as_str());
    }
    Ok(body)
}

/// The body of `/v1/query`: a session read carries the token, and falls back to a stale read
/// while there is none (nothing written yet, so any state is fresh enough).
pub(crate) fn query_body(
    sql: &str,
    params: &Params,
    consistency: Consistency,
    token: Option<Position>,
    session_wait: Option<Duration>,
) -> Result<serde_json::Value, Error> {
    let mut body = json!({ "sql": sql });
    if let Some(p) = params.to_json()? {
        body["params"] = p;
    }
    match (consistency, token) {
        (Consistency::Stale { max_lag }, _) => {
            body["consistency"] = json!("stale");
            if let Some(lag) = max_lag {
                body["max_lag"] = json!(api_duration(lag));
            }
        }
        (Consistency::Session, None) => body["consistency"] = json!("stale"),
        (Consistency::Session, Some(position)) => {
            body["consistency"] = json!("session");
            body["position"] = json!(position.to_string());
            if let Some(wait) = session_wait {
                body["wait"] = json!(api_duration(wait));
            }
        }
        (Consistency::Strong, _) => body["consistency"] = json!("strong"),
    }
    Ok(body)
}

/// The error a node's refusal reads as.
fn refused(sent: &Delivery) -> Error {
    match sent {
        Delivery::Answer {
            status: status @ (401 | 403),
            error,
            body,
        } => {
            let message = match error {
                Some(e) => e.message.clone(),
                None => String::from_utf8_lossy(body).chars().take(500).collect(),
            };
            if *status == 401 {
                Error::Unauthenticated(message)
            } else {
                Error::Forbidden(message)
            }
        }
        Delivery::Answer {
            status,
            error: Some(e),
            ..
        } => Error::Server {
            status: *status,
            code: e.code.clone(),
            message: e.message.clone(),
        },
        Delivery::Answer { status, body, .. } => Error::Server {
            status: *status,
            code: format!("http_{status}"),
            message: String::from_utf8_lossy(body).chars().take(500).collect(),
        },
        Delivery::NotSent(reason) | Delivery::Lost(reason) => Error::Unreachable(reason.clone()),
    }
}

/// The body of an answer; empty when there was none.
fn answer_body(sent: &Delivery) -> &[u8] {
    match sent {
        Delivery::Answer { body, .. } => body,
        Delivery::NotSent(_) | Delivery::Lost(_) => &[],
    }
}

/// What went wrong with a send, for messages.
fn reason(sent: &Delivery) -> String {
    match sent {
        Delivery::NotSent(r) | Delivery::Lost(r) => r.clone(),
        Delivery::Answer { .. } => refused(sent).to_string(),
    }
}

impl Router {
    /// Discovers the cluster from `seeds`; fails when no node answers.
    pub(crate) async fn connect(seeds: Vec<String>, options: Options) -> Result<Router, Error> {
        let mut http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout);
        for ca in &options.ca {
            let pem = match ca {
                crate::options::Ca::File(path) => std::fs::read(path).map_err(|e| {
                    Error::Usage(format!("read CA certificates {}: {e}", path.display()))
                })?,
                crate::options::Ca::Pem(pem) => pem.clone(),
            };
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Usage(format!("CA certificates: {e}")))?;
            if certs.is_empty() {
                return Err(Error::Usage(
                    "CA certificates: no PEM certificate found".into(),
                ));
            }
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        if let Some(credentials) = &options.credentials {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                credentials.header().map_err(Error::Usage)?,
            );
            http = http.default_headers(headers);
        }
        let http = http
            .build()
            .map_err(|e| Error::Usage(format!("build the HTTP client: {e}")))?;
        let router = Router {
            http,
            options,
            seeds,
            view: Mutex::new(View {
                topology: Topology::default(),
                generation: 0,
                discovered_at: Instant::now(),
            }),
            discovery: Arc::new(tokio::sync::Mutex::new(())),
        };
        router.refresh_now().await?;
        Ok(router)
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the primary from the picture taken at `seen` (not from a newer one): the next
    /// write finds none and discovers the cluster again.
    fn forget_primary(&self, seen: u64) {
        let mut view = self.view();
        if view.generation == seen {
            view.topology.primary = None;
        }
    }

    /// The picture of the cluster now.
    pub(crate) fn topology(&self) -> Topology {
        self.view().topology.clone()
    }

    /// Asks every known node for its status, then the nodes they name, and builds the topology.
    async fn discover(&self) -> Result<Topology, Error> {
        let mut to_ask: Vec<String> = self.seeds.clone();
        {
            let view = self.view();
            let t = &view.topology;
            for url in t
                .primary
                .iter()
                .map(|p| &p.url)
                .chain(t.replicas.iter().map(|r| &r.node.url))
            {
                if !to_ask.contains(url) {
                    to_ask.push(url.clone());
                }
            }
        }
        let mut answers: Vec<Answer> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let mut refusals: Vec<Error> = Vec::new();
        for _ in 0..DISCOVERY_ROUNDS {
            if to_ask.is_empty() {
                break;
            }
            let mut tasks = tokio::task::JoinSet::new();
            for (i, url) in to_ask.drain(..).enumerate() {
                let http = self.http.clone();
                let timeout = self.options.status_timeout;
                tasks.spawn(async move {
                    let r = transport::status(&http, &url, timeout).await;
                    (i, url, r)
                });
            }
            let mut round = Vec::new();
            while let Some(done) = tasks.join_next().await {
                // A status task only fails by panicking, which it does not do.
                if let Ok(r) = done {
                    round.push(r);
                }
            }
            // Keep the order asked: earlier URLs win when two reach the same node.
            round.sort_by_key(|(i, _, _)| *i);
            for (_, url, r) in round {
                match r {
                    Ok(view) => answers.push((url, Some(view))),
                    Err(e) => {
                        tracing::debug!(%url, error = %e.reason, "a node did not answer its status");
                        failures.push(format!("{url}: {}", e.reason));
                        match e.status {
                            Some(401) => refusals
                                .push(Error::Unauthenticated(format!("{url}: {}", e.reason))),
                            Some(403) => {
                                refusals.push(Error::Forbidden(format!("{url}: {}", e.reason)))
                            }
                            _ => {}
                        }
                        answers.push((url, None));
                    }
                }
            }
            to_ask = Topology::referenced_urls(&answers);
        }
        if answers.iter().all(|(_, v)| v.is_none()) {
            // Refused credentials are no network trouble: say so, and do not keep trying.
            if let Some(refusal) = refusals.into_iter().next() {
                return Err(refusal);
            }
            return Err(Error::Unreachable(failures.join("; ")));
        }
        Ok(Topology::build(&answers, self.options.max_replica_lag))
    }

    /// Discovers now and installs what it finds; on failure keeps the old picture.
    async fn refresh_locked(&self) -> Result<(), Error> {
        let found = self.discover().await;
        let mut view = self.view();
        view.generation += 1;
        view.discovered_at = Instant::now();
        let topology = found?;
        view.topology = topology.continuing(&view.topology);
        Ok(())
    }

    /// Discovers now, after any discovery under way.
    pub(crate) async fn refresh_now(&self) -> Result<(), Error> {
        let _one = self.discovery.lock().await;
        self.refresh_locked().await
    }

    /// Something failed against the picture of generation `seen`: discover again, unless a
    /// discovery has happened since.
    async fn rediscover(&self, seen: u64) {
        let _one = self.discovery.lock().await;
        if self.view().generation != seen {
            return;
        }
        if let Err(e) = self.refresh_locked().await {
            tracing::warn!(error = %e, "rediscover the cluster");
        }
    }

    /// Starts a discovery in the background when the picture is older than the refresh interval
    /// and none is under way.
    fn maybe_refresh(self: &Arc<Self>) {
        if self.view().discovered_at.elapsed() < self.options.refresh_interval {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(one) = self.discovery.clone().try_lock_owned() else {
            return;
        };
        let router = Arc::clone(self);
        runtime.spawn(async move {
            let _one = one;
            if let Err(e) = router.refresh_locked().await {
                tracing::warn!(error = %e, "refresh the cluster's topology");
            }
        });
    }

    /// Sends a transaction to the primary, retrying only while it provably did not take effect,
    /// and moves `token` to its position.
    pub(crate) async fn execute(
        self: &Arc<Self>,
        token: &Token,
        statements: &[Statement],
        commit: Option<CommitMode>,
    ) -> Result<Executed, Error> {
        let body = execute_body(statements, commit)?;
        self.maybe_refresh();
        let mut last = Error::NoPrimary("no node says it is the primary".to_string());
        let began = Instant::now();
        for attempt in 0u32.. {
            if attempt > 0 {
                let (retries, wait) = (self.options.write_retries, self.options.failover_wait);
                if !retry::retry_write(attempt, retries, began.elapsed(), wait) {
                    break;
                }
                tokio::time::sleep(retry::backoff(attempt - 1)).await;
            }
            let (primary, generation) = {
                let view = self.view();
                (
                    view.topology.primary.as_ref().map(|p| p.url.clone()),
                    view.generation,
                )
            };
            let Some(url) = primary else {
                last = Error::NoPrimary("no node says it is the primary".to_string());
                self.rediscover(generation).await;
                continue;
            };
            let sent = transport::post(&self.http, &url, "/v1/execute", &body).await;
            match retry::after_write(sent.attempt()) {
                WriteNext::Done => {
                    let executed =
                        answer::executed(answer_body(&sent), &url).map_err(|reason| {
                            Error::BadAnswer {
                                url: url.clone(),
                                reason: format!(
                                    "the write committed, but its answer reads wrong: {reason}"
                                ),
                            }
                        })?;
                    token.observe(executed.position);
                    return Ok(executed);
                }
                WriteNext::Rediscover => {
                    tracing::debug!(%url, attempt, reason = %reason(&sent), "a write did not reach the primary; rediscovering");
                    last = match &sent {
                        Delivery::NotSent(r) => {
                            Error::Unreachable(format!("the primary at {url}: {r}"))
                        }
                        _ => {
                            Error::NoPrimary(format!("{url} is not the primary: {}", reason(&sent)))
                        }
                    };
                    self.rediscover(generation).await;
                }
                WriteNext::Refused => {
                    if let Delivery::Answer { error: Some(e), .. } = &sent {
                        // `sync_timeout`: committed there; later reads must see it.
                        if let Some(p) = e.position {
                            token.observe(p);
                        }
                    }
                    return Err(refused(&sent));
                }
                WriteNext::Unknown => {
                    // The primary may have just died with the write in flight: forget it, so the
                    // caller's next write looks at the cluster again instead of going to the same
                    // node (on another kept-alive connection to it, with the same unknown end).
                    // At once: this answer does not wait for a discovery.
                    self.forget_primary(generation);
                    return Err(Error::OutcomeUnknown {
                        url,
                        reason: reason(&sent),
                    });
                }
            }
        }
        Err(last)
    }

    /// Runs a read on the next node that can serve it and moves `token` to the position it saw.
    pub(crate) async fn query(
        self: &Arc<Self>,
        token: &Token,
        sql: &str,
        params: &Params,
        consistency: Consistency,
    ) -> Result<Rows, Error> {
        let body = query_body(
            sql,
            params,
            consistency,
            token.get(),
            self.options.session_wait,
        )?;
        self.maybe_refresh();
        let mut last: Option<Error> = None;
        for pass in 0..2 {
            let (order, generation) = {
                let mut view = self.view();
                let order = match consistency {
                    Consistency::Strong => view
                        .topology
                        .primary
                        .iter()
                        .map(|p| p.url.clone())
                        .collect(),
                    _ => view.topology.read_order(),
                };
                (order, view.generation)
            };
            for url in &order {
                let sent = transport::post(&self.http, url, "/v1/query", &body).await;
                match retry::after_read(sent.attempt()) {
                    ReadNext::Done => {
                        let rows = answer::rows(answer_body(&sent), url).map_err(|reason| {
                            Error::BadAnswer {
                                url: url.clone(),
                                reason,
                            }
                        })?;
                        if let Some(p) = rows.position {
                            token.observe(p);
                        }
                        return Ok(rows);
                    }
                    ReadNext::TryNext => {
                        tracing::debug!(%url, reason = %reason(&sent), "a read moves on to the next node");
                        if matches!(sent, Delivery::NotSent(_) | Delivery::Lost(_)) {
                            self.view().topology.mark_down(url);
                        }
                        last = Some(match &sent {
                            Delivery::Answer { .. } => refused(&sent),
                            _ => Error::Unreachable(format!("{url}: {}", reason(&sent))),
                        });
                    }
                    ReadNext::Refused => return Err(refused(&sent)),
                }
            }
            if pass == 0 {
                self.rediscover(generation).await;
            }
        }
        Err(last.unwrap_or_else(|| match consistency {
            Consistency::Strong => Error::NoPrimary("no node says it is the primary".to_string()),
            _ => Error::Unreachable("no node of the cluster is known".to_string()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scribe_core::{Lsn, Term};

    #[test]
    fn urls_are_checked_and_normalized() {
        assert_eq!(
            seed_urls(["http://a:1/", "http://a:1", " http://b:2"]).unwrap(),
            vec!["http://a:1", "http://b:2"]
        );
        for bad in [vec![], vec!["a:1"], vec!["ftp://x"], vec!["http://"]] {
            assert!(
                matches!(seed_urls(bad.clone()), Err(Error::Usage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn writes_ask_not_to_be_forwarded_and_name_their_commit_mode() {
        let body = execute_body(
            &[Statement::new("INSERT INTO t VALUES (?)").param(1)],
            Some(CommitMode::SemiSync),
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"statements": [{"sql": "INSERT INTO t VALUES (?)", "params": [1]}],
                   "forward": false, "commit": "semi-sync"})
        );
        assert!(execute_body(&[Statement::new("x")], None)
            .unwrap()
            .get("commit")
            .is_none());
    }

    #[test]
    fn a_session_read_carries_the_token_once_there_is_one() {
        let p = Position::new(Term(1), Lsn(42));
        let none = Params::new();
        assert_eq!(
            query_body("SELECT 1", &none, Consistency::Session, None, None).unwrap(),
            json!({"sql": "SELECT 1", "consistency": "stale"})
        );
        assert_eq!(
            query_body(
                "SELECT 1",
                &none,
                Consistency::Session,
                Some(p),
                Some(Duration::from_millis(250))
            )
            .unwrap(),
            json!({"sql": "SELECT 1", "consistency": "session", "position": "1/42", "wait": "250ms"})
        );
        assert_eq!(
            query_body(
                "SELECT ?",
                &Params::from([7]),
                Consistency::Stale {
                    max_lag: Some(Duration::from_secs(2))
                },
                Some(p),
                None
            )
            .unwrap(),
            json!({"sql": "SELECT ?", "params": [7], "consistency": "stale", "max_lag": "2000ms"})
        );
        assert_eq!(
            query_body("SELECT 1", &none, Consistency::Strong, Some(p), None).unwrap(),
            json!({"sql": "SELECT 1", "consistency": "strong"})
        );
    }

    #[test]
    fn durations_read_as_milliseconds() {
        assert_eq!(api_duration(Duration::ZERO), "0ms");
        assert_eq!(api_duration(Duration::from_micros(10)), "1ms");
        assert_eq!(api_duration(Duration::from_secs(1)), "1000ms");
    }
}
