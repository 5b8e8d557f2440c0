//! `tandem bench`: the flags; the measurements are in `tandem-bench`.

use std::process::ExitCode;
use std::sync::Arc;

use tandem_bench::{Connect, EtcdLoad, Fault, Fencing, HostLoss, SiteLoss};
use tandem_store::Store;

use crate::cluster::StoreArgs;

/// Flags of `tandem bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchKind,
}

#[derive(clap::Subcommand, Debug)]
enum BenchKind {
    /// Kill -9 of a warm primary → the backup answers as primary.
    Failover(Trials),
    /// Kill -9 of a cold-standby primary → the spare, started, answers as primary.
    Cold(Trials),
    /// Kill -9 of a singleton → the gap until another one runs.
    Singleton(Trials),
    /// Kill -9 of a hot-standby aggregator → the new primary writes again.
    Hot(Trials),
    /// Pool dispatch: IS ALIVE round + job accepted, over real workers.
    Pool(Trials),
    /// A discovery client: kill -9 → its first successful request to the
    /// new primary (it is told by push).
    Discovery(Trials),
    /// `tandem proxy`: kill -9 → the first successful request through the
    /// proxy; and the proxy's latency and throughput against a direct
    /// connection.
    Proxy(Trials),
    /// Production mode: the primary's host is killed or cut off → the
    /// backup on another host answers as primary (on a cluster the bench
    /// builds in network namespaces: needs root).
    HostLoss(HostLossArgs),
    /// Sites: the active site dc1 is cut off → reported lost and its
    /// pinned app read-only; `site promote dc2` → the app serves in dc2,
    /// and through dc2's proxy (each trial on a fresh cluster the bench
    /// builds in network namespaces: needs root).
    SiteLoss(SiteLossArgs),
    /// Production mode: etcd writes per managed instance and lease
    /// keep-alives per host, in steady state.
    EtcdLoad(EtcdLoadArgs),
    /// N warm-standby apps (2N processes) under a real `tandem up`: start →
    /// every primary serving, idle CPU and RSS, kill -9 → new primary
    /// serving.
    Scale(ScaleArgs),
    /// Admin-data mirroring (tandem-sync, on 127.0.0.1): an atomic edit of
    /// the primary's admin directory → the same bytes readable in the
    /// backup's, for small edits and 10 MiB files.
    AdminSync(AdminSyncArgs),
    /// Exclusive link group: the main switch goes down → a demo CMS has its
    /// survivable link active (and back once it is up again).
    ExclusiveSwitch(ExclusiveSwitchArgs),
}

/// Flags of `tandem bench admin-sync`.
#[derive(clap::Args, Debug)]
struct AdminSyncArgs {
    /// Small edits (about 200 bytes) timed.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    trials: u64,
    /// 10 MiB files timed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=1000))]
    big_trials: u64,
    /// Sign every request with a shared secret (HMAC-SHA256), as agents
    /// with a cluster secret do.
    #[arg(long)]
    signed: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// Flags of `tandem bench exclusive-switch`.
#[derive(clap::Args, Debug)]
struct ExclusiveSwitchArgs {
    /// Number of trials.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    trials: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// Flags of `tandem bench scale`.
#[derive(clap::Args, Debug)]
struct ScaleArgs {
    /// Warm-standby apps (each two `sleep` processes).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=5000))]
    apps: u64,
    /// Primaries killed, one app after another (around again, once it
    /// has a backup again, when there are fewer apps).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=1000))]
    kills: u64,
    /// Length of the idle window, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    idle_seconds: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct Trials {
    /// Number of trials.
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Run on this etcd cluster (etcd://h1:2379,...) instead of the
    /// embedded store.
    #[arg(long)]
    store: Option<String>,
}

/// Flags of `tandem bench host-loss`.
#[derive(clap::Args, Debug)]
struct HostLossArgs {
    /// How the app is fenced: `lease` (promoted once the host's lease
    /// expired), `token` (`fencing = "token"`: promoted once the host is
    /// suspected) or `device` (every host has a fence device).
    #[arg(long, value_enum, default_value_t = FencingArg::Lease)]
    fencing: FencingArg,
    /// How the primary's host is lost: `kill` (SIGKILL of all its
    /// processes), `isolate` (all its traffic dropped, its processes left
    /// running) or `link` (only its path to a switch that every instance
    /// needs is cut: a link-driven switchover).
    #[arg(long, value_enum, default_value_t = FaultArg::Kill)]
    fault: FaultArg,
    /// Number of trials.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// The agents' lease TTL in ms (etcd grants whole seconds); the renew
    /// interval is a sixth of it and the fence margin a third, as with the
    /// topology defaults (3 s, 500 ms, 1 s).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1000..=60_000))]
    lease_ttl_ms: u64,
    /// With `--fault link`: the app's `link_hold_down` in ms.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    link_hold_down_ms: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the agents' and etcd's logs (the directory is printed).
    #[arg(long)]
    keep_logs: bool,
}

/// Flags of `tandem bench site-loss`.
#[derive(clap::Args, Debug)]
struct SiteLossArgs {
    /// Number of trials, each on a fresh cluster.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    trials: u64,
    /// The agents' lease TTL in ms (etcd grants whole seconds); the renew
    /// interval is a sixth of it and the fence margin a third.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1000..=60_000))]
    lease_ttl_ms: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the agents' and etcd's logs (the directories are printed).
    #[arg(long)]
    keep_logs: bool,
}

/// `--fencing` of `tandem bench host-loss`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FencingArg {
    Lease,
    Token,
    Device,
}

/// `--fault` of `tandem bench host-loss`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FaultArg {
    Kill,
    Isolate,
    Link,
}

/// Flags of `tandem bench etcd-load`.
#[derive(clap::Args, Debug)]
struct EtcdLoadArgs {
    /// The etcd cluster (etcd://h1:2379,...); everything under /tandem/ is replaced.
    #[arg(long)]
    store: String,
    /// Managed instances (warm-standby pairs, so an even number).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=400))]
    instances: u64,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// The agents' lease TTL in ms (see `host-loss`).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1000..=60_000))]
    lease_ttl_ms: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

impl From<Trials> for tandem_bench::Trials {
    fn from(t: Trials) -> Self {
        tandem_bench::Trials {
            trials: t.trials,
            json: t.json,
            store: t.store,
        }
    }
}

/// Reaches a `--store` URL as `tandem agent --store URL` does (no TLS).
struct Etcd;

impl Connect for Etcd {
    async fn connect(&self, url: &str) -> anyhow::Result<Arc<dyn Store>> {
        StoreArgs {
            store: url.to_string(),
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
        }
        .connect()
        .await
    }
}

/// Runs a benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging(crate::LogFormat::Text, "error");
    match args.what {
        BenchKind::Failover(t) => tandem_bench::failover(&t.into(), &Etcd).await,
        BenchKind::Cold(t) => tandem_bench::cold(&t.into(), &Etcd).await,
        BenchKind::Singleton(t) => tandem_bench::singleton(&t.into(), &Etcd).await,
        BenchKind::Hot(t) => tandem_bench::hot(&t.into(), &Etcd).await,
        BenchKind::Pool(t) => tandem_bench::pool(t.trials, t.json).await,
        BenchKind::Discovery(t) => tandem_bench::discovery(&t.into(), &Etcd).await,
        BenchKind::Proxy(t) => tandem_bench::proxy(&t.into(), &Etcd).await,
        BenchKind::HostLoss(a) => {
            let options = HostLoss {
                trials: a.trials,
                fencing: match a.fencing {
                    FencingArg::Lease => Fencing::Lease,
                    FencingArg::Token => Fencing::Token,
                    FencingArg::Device => Fencing::Device,
                },
                fault: match a.fault {
                    FaultArg::Kill => Fault::Kill,
                    FaultArg::Isolate => Fault::Isolate,
                    FaultArg::Link => Fault::Link,
                },
                lease_ttl_ms: a.lease_ttl_ms,
                link_hold_down_ms: a.link_hold_down_ms,
                json: a.json,
                keep_logs: a.keep_logs,
            };
            tandem_bench::host_loss(&options, &Etcd).await
        }
        BenchKind::SiteLoss(a) => {
            let options = SiteLoss {
                trials: a.trials as usize,
                lease_ttl_ms: a.lease_ttl_ms,
                json: a.json,
                keep_logs: a.keep_logs,
            };
            tandem_bench::site_loss(&options, &Etcd).await
        }
        BenchKind::EtcdLoad(a) => {
            let options = EtcdLoad {
                store: a.store,
                instances: a.instances,
                seconds: a.seconds,
                lease_ttl_ms: a.lease_ttl_ms,
                json: a.json,
            };
            tandem_bench::etcd_load(&options, &Etcd).await
        }
        BenchKind::Scale(a) => {
            let options = tandem_bench::Scale {
                apps: a.apps as usize,
                kills: a.kills as usize,
                idle_seconds: a.idle_seconds,
                json: a.json,
            };
            tandem_bench::scale(&options).await
        }
        BenchKind::AdminSync(a) => {
            let options = tandem_bench::AdminSync {
                trials: a.trials as usize,
                big_trials: a.big_trials as usize,
                signed: a.signed,
                json: a.json,
            };
            tandem_bench::admin_sync(&options).await
        }
        BenchKind::ExclusiveSwitch(a) => {
            tandem_bench::exclusive_switch(a.trials as usize, a.json).await
        }
    }?;
    Ok(ExitCode::SUCCESS)
}
