//! `thinpool-e2e`: runs thinpool-csi on real device-mapper in a VM (Debian's kernel under qemu).
//!
//! - `vm [FILTER]`: the VM suite (loop and direct-lvm pools, crash safety, data isolation, churn).
//! - `demo`: the driver's main job on its embedded default, a loop pool, with readable output.
//! - `bench`: create/snapshot/delete latency against LVM on the same kind of pool.
//! - `cluster`: a one-node Kubernetes cluster in the VM, the chart installed with Helm, and the
//!   cluster suite run against it (after `e2e/cluster/build.sh` and `e2e/cluster/images.sh`).
//! - `upstream SHARD...`: the same cluster, the chart, and shards of Kubernetes' own storage e2e
//!   suite (after `e2e/upstream/build.sh` too); its reports stay in `target/vm/runs/upstream/`.
//! - `powercut`: a guest on persistent disks killed at random moments, checked after every boot.

mod build;
mod powercut;
mod vm;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "thinpool-e2e", about = "thinpool-csi end-to-end suites in a VM with real device-mapper")]
struct Cli {
    /// Time limit for the whole guest run, in seconds.
    #[arg(long, global = true)]
    timeout: Option<u64>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the VM suite (optionally only tests whose name contains FILTER).
    Vm { filter: Option<String> },
    /// Demonstrate a volume, a snapshot and a restore on a loop pool.
    Demo,
    /// Benchmark create/snapshot/delete against LVM.
    Bench {
        /// Operations per kind.
        #[arg(long, default_value_t = 200)]
        ops: u32,
        /// Build the benchmark without optimisation, from what the VM suite already compiled: a
        /// quick check that it still runs (CI); its numbers say nothing.
        #[arg(long)]
        smoke: bool,
    },
    /// Bring up a one-node Kubernetes cluster in the VM and run the cluster suite against it.
    Cluster,
    /// Bring up the same cluster and run shards of Kubernetes' storage e2e suite against it
    /// (e2e/upstream/shards.sh names them; the limit is 15 minutes plus 80 per shard).
    Upstream {
        #[arg(required = true)]
        shards: Vec<String>,
    },
    /// Kill the guest at random moments of a workload on persistent disks; check after each boot.
    Powercut {
        /// Power cuts (boots that are killed); one more boot checks at the end.
        #[arg(long, default_value_t = 50)]
        cuts: u32,
        /// Seed of the cut times and the workload [default: from the clock, printed].
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thinpool-e2e: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let limit = |default: u64| Duration::from_secs(cli.timeout.unwrap_or(default));
    match cli.command {
        Cmd::Vm { filter } => {
            let suite = build::kernel_suite()?;
            let csi = build::csi_binary(false)?;
            let sanity = build::csi_sanity()?;
            let filter = filter.unwrap_or_default();
            if !filter.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                anyhow::bail!("the filter {filter:?} may hold only letters, digits, '_' and '-'");
            }
            let script = format!(
                "export THINPOOL_CSI_BIN={}\nexport THINPOOL_CSI_SANITY={}\n{} {filter}",
                csi.display(),
                sanity.display(),
                suite.display()
            );
            vm::run_in_vm("kernel-suite", &script, limit(1500), true)
        }
        Cmd::Demo => {
            let csi = build::csi_binary(false)?;
            let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/demo.sh");
            let color = u8::from(std::io::IsTerminal::is_terminal(&std::io::stdout()));
            let script = format!(
                "export THINPOOL_CSI={}\nexport THINPOOL_DEMO_COLOR={color}\nsh {}",
                csi.display(),
                demo.display()
            );
            vm::run_in_vm("demo", &script, limit(300), false)
        }
        Cmd::Cluster => cluster_in_vm("cluster", "", limit(3600)),
        Cmd::Upstream { shards } => {
            if let Some(bad) =
                shards.iter().find(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            {
                anyhow::bail!("the shard name {bad:?} may hold only letters, digits and '-'");
            }
            let per_shard = 80 * 60 * shards.len() as u64;
            let env = format!("export THINPOOL_E2E_UPSTREAM_SHARDS='{}'\n", shards.join(" "));
            cluster_in_vm("upstream", &env, limit(15 * 60 + per_shard))
        }
        Cmd::Powercut { cuts, seed } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
            });
            powercut::run(cuts, seed)
        }
        Cmd::Bench { ops, smoke } => {
            let bench = build::bench(!smoke)?;
            if smoke {
                println!("bench: an unoptimised smoke run; its numbers are not the benchmark's");
            }
            let script = format!("{} --ops {ops}", bench.display());
            vm::run_in_vm("bench", &script, limit(2400), true)
        }
    }
}

/// Boots the one-node cluster of `e2e/guest/cluster.sh` in the VM, `env` (export lines) set first.
fn cluster_in_vm(name: &str, env: &str, limit: Duration) -> Result<()> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize()?;
    let images = workspace.join("target/cluster/images.ext4");
    for needed in ["target/cluster/bin/kubelet", "target/cluster/images.ext4"] {
        anyhow::ensure!(
            workspace.join(needed).exists(),
            "{needed} is missing: run e2e/cluster/build.sh and e2e/cluster/images.sh first (e2e/run.sh cluster does)"
        );
    }
    let pool = pool_disk(&workspace.join("target/cluster"))?;
    let script = format!("{env}export THINPOOL_E2E_WS={ws}\nbash {ws}/e2e/guest/cluster.sh", ws = workspace.display());
    // The control plane lives in the guest's memory; containerd's images on /dev/vda and the
    // driver's state directory (its loop pool's files) on /dev/vdb, both copy-on-write.
    vm::run_in_vm_with(name, &script, limit, false, 8192, &[images, pool])
}

/// An empty ext4 disk for the node's `/var/lib/thinpool-csi`, where the chart's loop pool keeps its
/// sparse files, as on a real node's disk. In the guest's memory (a tmpfs, at most half of it) a
/// long run filled the tmpfs and the guest's memory long before the pool. Made once, sparse;
/// attached copy-on-write, so every run starts from it empty.
fn pool_disk(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    const BYTES: u64 = 32 << 30;
    let disk = dir.join("pool.ext4");
    if disk.metadata().is_ok_and(|m| m.len() == BYTES) {
        return Ok(disk);
    }
    std::fs::create_dir_all(dir)?;
    let partial = dir.join("pool.ext4.partial");
    std::fs::File::create(&partial)?.set_len(BYTES)?;
    // Inode tables and journal written now (few inodes: a pool is two files), not by the guest.
    let out = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-N", "4096", "-L", "tpcsi-pool"])
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(&partial)
        .output()?;
    anyhow::ensure!(out.status.success(), "mke2fs {}: {}", partial.display(), String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&partial, &disk)?;
    Ok(disk)
}
