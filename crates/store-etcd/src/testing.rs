//! Running etcd members for tests and benchmarks: the command line every
//! member of a fresh cluster gets, wherever it listens.

use std::path::Path;

/// One member of a fresh cluster.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    /// Its name (`--name`), as in `initial_cluster`.
    pub name: &'a str,
    /// Its client URL (`http://ADDR:PORT`), listened on and advertised.
    pub client_url: &'a str,
    /// Its peer URL, listened on and advertised.
    pub peer_url: &'a str,
    /// `name=peer_url` of every member, comma-separated.
    pub initial_cluster: &'a str,
    /// The cluster token.
    pub token: &'a str,
    /// Its data directory.
    pub data_dir: &'a Path,
}

impl Member<'_> {
    /// The `etcd` arguments of the member (3.4): pre-vote on (the default
    /// from 3.5: a member that was cut off does not disrupt the leader when
    /// it returns), logs to stderr.
    pub fn args(&self) -> Vec<String> {
        [
            "--name",
            self.name,
            "--data-dir",
            &self.data_dir.display().to_string(),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-token",
            self.token,
            "--initial-cluster-state",
            "new",
            "--pre-vote",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}
