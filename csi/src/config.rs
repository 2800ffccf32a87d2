//! Node configuration from flags and environment: which pool to open and the admission limits.
//! Everything is validated here, once, into typed values; a bad value gets a message that says
//! which flag to fix.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::dm::loopback::LoopSpec;
use crate::engine::Limits;
use crate::units::parse_size;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/thinpool-csi";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PoolKindArg {
    /// Sparse files on loop devices (for trying it out).
    Loop,
    /// An existing LVM thin pool given by --lvm-pool VG/LV (production).
    DirectLvm,
    /// direct-lvm on the empty disk --device: the pool --lvm-pool (default thinpool-csi/thinpool) is
    /// built there on first start and adopted afterwards; a disk holding data is refused.
    Device,
}

/// The VG/LV `--pool device` builds when --lvm-pool is not given.
pub const DEFAULT_DEVICE_POOL: &str = "thinpool-csi/thinpool";

/// Flags shared by every subcommand that opens the pool.
#[derive(Args, Clone, Debug)]
pub struct PoolArgs {
    /// Directory for the node's durable records.
    #[arg(long, env = "THINPOOL_CSI_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Kind of pool to open.
    #[arg(long = "pool", env = "THINPOOL_CSI_POOL", value_enum, default_value = "loop")]
    pub kind: PoolKindArg,
    /// dm name of the loop pool.
    #[arg(long, env = "THINPOOL_CSI_POOL_NAME", default_value = "thinpool-csi")]
    pub pool_name: String,
    /// Directory of the loop pool's sparse files [default: <state-dir>/loop].
    #[arg(long, env = "THINPOOL_CSI_LOOP_DIR")]
    pub loop_dir: Option<PathBuf>,
    /// Size of the loop pool's sparse data file.
    #[arg(long, env = "THINPOOL_CSI_LOOP_DATA_SIZE", default_value = "10Gi")]
    pub loop_data_size: String,
    /// Size of the loop pool's metadata file [default: 48 bytes per data block, at least 4 MiB].
    #[arg(long, env = "THINPOOL_CSI_LOOP_METADATA_SIZE")]
    pub loop_metadata_size: Option<String>,
    /// Data block (chunk) size of a new loop pool: a multiple of 64Ki from 64Ki to 1Gi.
    #[arg(long, env = "THINPOOL_CSI_LOOP_BLOCK_SIZE", default_value = "64Ki")]
    pub loop_block_size: String,
    /// The block device for --pool device, e.g. /dev/sdb or /dev/disk/by-id/...
    #[arg(long, env = "THINPOOL_CSI_DEVICE")]
    pub device: Option<PathBuf>,
    /// The LVM thin pool to adopt, as VG/LV (with --pool direct-lvm), or to build (--pool device).
    #[arg(long, env = "THINPOOL_CSI_LVM_POOL")]
    pub lvm_pool: Option<String>,
    /// Virtual bytes that may be provisioned per byte of pool data space.
    #[arg(long, env = "THINPOOL_CSI_OVERPROVISION_RATIO", default_value_t = 5.0)]
    pub overprovision_ratio: f64,
    /// No new volumes once pool data fill is above this percentage.
    #[arg(long, env = "THINPOOL_CSI_DATA_FILL_LIMIT", default_value_t = 90.0)]
    pub data_fill_limit: f64,
    /// No new volumes once pool metadata fill is above this percentage.
    #[arg(long, env = "THINPOOL_CSI_METADATA_FILL_LIMIT", default_value_t = 80.0)]
    pub metadata_fill_limit: f64,
}

/// Automatic extension of an LVM-backed pool (`grow`), off unless a threshold is given.
#[derive(Args, Clone, Debug, Default)]
pub struct AutoExtendArgs {
    /// Grow an LVM-backed pool (direct-lvm, device) by itself once its data or metadata fill
    /// reaches this percentage: 50 to 95, or 0 for never (the default).
    #[arg(long, env = "THINPOOL_CSI_AUTO_EXTEND_THRESHOLD", default_value_t = 0)]
    pub auto_extend_threshold: u8,
    /// Each automatic growth adds this percentage of the part's size (1 to 100).
    #[arg(long, env = "THINPOOL_CSI_AUTO_EXTEND_PERCENT", default_value_t = 20)]
    pub auto_extend_percent: u16,
    /// The largest the pool's data may grow to, e.g. 500Gi ("": as far as the volume group allows).
    #[arg(long, env = "THINPOOL_CSI_AUTO_EXTEND_MAX_SIZE", default_value = "")]
    pub auto_extend_max_size: String,
}

impl AutoExtendArgs {
    /// The policy, or `None` when off. Refused for a loop pool (grow it with a larger
    /// --loop-data-size) and for values out of range.
    pub fn validate(&self, pool: &PoolSpec) -> Result<Option<crate::grow::plan::Policy>, ConfigError> {
        use crate::grow::plan::{Policy, MAX_THRESHOLD_PCT, MIN_THRESHOLD_PCT};
        let t = self.auto_extend_threshold;
        if t == 0 {
            return Ok(None);
        }
        if !(MIN_THRESHOLD_PCT..=MAX_THRESHOLD_PCT).contains(&t) {
            return Err(invalid(
                "auto-extend-threshold",
                t,
                format!("must be 0 (off) or a percentage from {MIN_THRESHOLD_PCT} to {MAX_THRESHOLD_PCT}"),
            ));
        }
        if matches!(pool, PoolSpec::Loop(_)) {
            return Err(invalid(
                "auto-extend-threshold",
                t,
                "automatic extension grows LVM-backed pools (--pool direct-lvm or device); grow a loop pool with a larger --loop-data-size",
            ));
        }
        if !(1..=100).contains(&self.auto_extend_percent) {
            return Err(invalid("auto-extend-percent", self.auto_extend_percent, "must be from 1 to 100"));
        }
        let max_data_bytes = match self.auto_extend_max_size.trim() {
            "" => None,
            v => Some(parse_size(v).map_err(|e| invalid("auto-extend-max-size", v, e.to_string()))?),
        };
        Ok(Some(Policy { threshold_pct: t, step_pct: self.auto_extend_percent, max_data_bytes }))
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PoolSpec {
    Loop(LoopSpec),
    DirectLvm { vg: String, lv: String },
    Device { device: String, vg: String, lv: String },
}

impl std::fmt::Display for PoolSpec {
    /// What an operator checks: the pool's kind, where it lives and its sizes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::units::human_bytes;
        match self {
            PoolSpec::Loop(l) => write!(
                f,
                "loop: dm device {} on sparse files in {} (data {}, metadata {}, chunk {})",
                l.name,
                l.dir.display(),
                human_bytes(l.data_bytes),
                human_bytes(l.meta_bytes),
                human_bytes(l.block_bytes)
            ),
            PoolSpec::DirectLvm { vg, lv } => write!(f, "direct-lvm: the LVM thin pool {vg}/{lv}"),
            PoolSpec::Device { device, vg, lv } => {
                write!(f, "device: {device}, as the LVM thin pool {vg}/{lv} (built there when the disk is empty)")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    pub state_dir: PathBuf,
    pub pool: PoolSpec,
    pub limits: Limits,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--{flag} {value:?}: {reason}")]
    Invalid { flag: &'static str, value: String, reason: String },
    #[error("--pool direct-lvm needs --lvm-pool VG/LV naming an existing LVM thin pool")]
    MissingLvmPool,
    #[error("--pool device needs --device naming an empty block device (e.g. /dev/sdb)")]
    MissingDevice,
}

fn invalid(flag: &'static str, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { flag, value: value.to_string(), reason: reason.into() }
}

/// An LVM VG or LV name: what `lvcreate` accepts.
pub fn valid_lvm_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && !s.starts_with('-')
        && s != "."
        && s != ".."
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

/// Metadata size for a pool: 48 bytes per data block, at least 4 MiB, at most 16 GiB, whole MiB.
pub fn default_meta_bytes(data_bytes: u64, block_bytes: u64) -> u64 {
    let raw = 48 * (data_bytes / block_bytes.max(1));
    raw.clamp(4 << 20, 16 << 30).div_ceil(1 << 20) << 20
}

fn vg_lv(spec: &str) -> Result<(String, String), ConfigError> {
    spec.split_once('/')
        .filter(|(vg, lv)| valid_lvm_name(vg) && valid_lvm_name(lv))
        .map(|(vg, lv)| (vg.to_owned(), lv.to_owned()))
        .ok_or_else(|| invalid("lvm-pool", spec, "must be VG/LV with LVM names on both sides"))
}

impl PoolArgs {
    pub fn validate(&self) -> Result<NodeConfig, ConfigError> {
        let limits = Limits {
            overprovision_ratio: self.overprovision_ratio,
            data_fill_limit_pct: self.data_fill_limit,
            meta_fill_limit_pct: self.metadata_fill_limit,
        };
        if !(limits.overprovision_ratio.is_finite() && limits.overprovision_ratio >= 1.0) {
            return Err(invalid("overprovision-ratio", self.overprovision_ratio, "must be a number of at least 1"));
        }
        for (flag, v) in [("data-fill-limit", self.data_fill_limit), ("metadata-fill-limit", self.metadata_fill_limit)]
        {
            if !(v > 0.0 && v <= 100.0) {
                return Err(invalid(flag, v, "must be a percentage above 0 and at most 100"));
            }
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid("state-dir", self.state_dir.display(), "must be an absolute path"));
        }
        let pool = match self.kind {
            PoolKindArg::Loop => PoolSpec::Loop(self.loop_spec()?),
            PoolKindArg::DirectLvm => {
                let (vg, lv) = vg_lv(self.lvm_pool.as_deref().ok_or(ConfigError::MissingLvmPool)?)?;
                PoolSpec::DirectLvm { vg, lv }
            }
            PoolKindArg::Device => {
                let device = self.device.as_ref().ok_or(ConfigError::MissingDevice)?;
                if !device.starts_with("/dev/")
                    || device.to_str().is_none()
                    || device.to_string_lossy().contains("/../")
                {
                    return Err(invalid("device", device.display(), "must be a device path under /dev/"));
                }
                let (vg, lv) = vg_lv(self.lvm_pool.as_deref().unwrap_or(DEFAULT_DEVICE_POOL))?;
                PoolSpec::Device { device: device.display().to_string(), vg, lv }
            }
        };
        Ok(NodeConfig { state_dir: self.state_dir.clone(), pool, limits })
    }

    fn loop_spec(&self) -> Result<LoopSpec, ConfigError> {
        let name = &self.pool_name;
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid("pool-name", name, "use 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        let size = |flag: &'static str, v: &str| parse_size(v).map_err(|e| invalid(flag, v, e.to_string()));
        let block_bytes = size("loop-block-size", &self.loop_block_size)?;
        if !(64 << 10..=1 << 30).contains(&block_bytes) || !block_bytes.is_multiple_of(64 << 10) {
            return Err(invalid(
                "loop-block-size",
                &self.loop_block_size,
                "must be a multiple of 64Ki from 64Ki to 1Gi",
            ));
        }
        let data_bytes = size("loop-data-size", &self.loop_data_size)?;
        if data_bytes < 16 * block_bytes.max(4 << 20) {
            return Err(invalid("loop-data-size", &self.loop_data_size, "is too small for a pool (at least 64Mi)"));
        }
        let meta_bytes = match &self.loop_metadata_size {
            None => default_meta_bytes(data_bytes, block_bytes),
            Some(v) => {
                let m = size("loop-metadata-size", v)?;
                if !(2 << 20..=16 << 30).contains(&m) {
                    return Err(invalid("loop-metadata-size", v, "must be from 2Mi to 16Gi"));
                }
                m
            }
        };
        let dir = self.loop_dir.clone().unwrap_or_else(|| self.state_dir.join("loop"));
        if !dir.is_absolute() {
            return Err(invalid("loop-dir", dir.display(), "must be an absolute path"));
        }
        Ok(LoopSpec { dir, name: name.clone(), data_bytes, meta_bytes, block_bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        pool: PoolArgs,
    }

    fn parse(args: &[&str]) -> Result<NodeConfig, ConfigError> {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        Cli::parse_from(all).pool.validate()
    }

    #[test]
    fn defaults_are_a_loop_pool_under_the_state_dir() {
        let c = parse(&[]).unwrap();
        let PoolSpec::Loop(l) = c.pool else { panic!() };
        assert_eq!(l.dir, PathBuf::from("/var/lib/thinpool-csi/loop"));
        assert_eq!(l.data_bytes, 10 << 30);
        assert_eq!(l.block_bytes, 64 << 10);
        assert_eq!(l.meta_bytes, 8 << 20);
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn direct_lvm_needs_a_valid_vg_lv() {
        assert_eq!(parse(&["--pool", "direct-lvm"]), Err(ConfigError::MissingLvmPool));
        assert!(parse(&["--pool", "direct-lvm", "--lvm-pool", "vg"]).is_err());
        assert!(parse(&["--pool", "direct-lvm", "--lvm-pool", "vg/../x"]).is_err());
        assert!(parse(&["--pool", "direct-lvm", "--lvm-pool", "vg/-x"]).is_err());
        let c = parse(&["--pool", "direct-lvm", "--lvm-pool", "docker/thinpool"]).unwrap();
        assert_eq!(c.pool, PoolSpec::DirectLvm { vg: "docker".into(), lv: "thinpool".into() });
    }

    #[test]
    fn device_pools_need_a_device_under_dev() {
        assert_eq!(parse(&["--pool", "device"]), Err(ConfigError::MissingDevice));
        assert!(parse(&["--pool", "device", "--device", "sdb"]).is_err());
        assert!(parse(&["--pool", "device", "--device", "/dev/../etc/passwd"]).is_err());
        assert!(parse(&["--pool", "device", "--device", "/dev/sdb", "--lvm-pool", "x"]).is_err());
        let c = parse(&["--pool", "device", "--device", "/dev/sdb"]).unwrap();
        let expect = PoolSpec::Device { device: "/dev/sdb".into(), vg: "thinpool-csi".into(), lv: "thinpool".into() };
        assert_eq!(c.pool, expect);
    }

    #[test]
    fn bad_limits_and_sizes_are_refused() {
        assert!(parse(&["--overprovision-ratio", "0.5"]).is_err());
        assert!(parse(&["--overprovision-ratio", "NaN"]).is_err());
        assert!(parse(&["--data-fill-limit", "0"]).is_err());
        assert!(parse(&["--metadata-fill-limit", "101"]).is_err());
        assert!(parse(&["--loop-block-size", "100Ki"]).is_err());
        assert!(parse(&["--loop-data-size", "1Mi"]).is_err());
        assert!(parse(&["--loop-data-size", "ten"]).is_err());
        assert!(parse(&["--loop-metadata-size", "1Mi"]).is_err());
        assert!(parse(&["--pool-name", "a/b"]).is_err());
        assert!(parse(&["--state-dir", "relative"]).is_err());
    }

    #[test]
    fn auto_extension_is_off_by_default_and_checked() {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            pool: PoolArgs,
            #[command(flatten)]
            grow: AutoExtendArgs,
        }
        let check = |args: &[&str]| {
            let mut all = vec!["x"];
            all.extend_from_slice(args);
            let cli = Cli::parse_from(all);
            let cfg = cli.pool.validate().unwrap();
            cli.grow.validate(&cfg.pool)
        };
        let lvm = ["--pool", "direct-lvm", "--lvm-pool", "vg/pool"];
        assert_eq!(check(&lvm), Ok(None));
        let on = check(&[&lvm[..], &["--auto-extend-threshold", "80", "--auto-extend-max-size", "100Gi"][..]].concat());
        let p = on.unwrap().unwrap();
        assert_eq!((p.threshold_pct, p.step_pct, p.max_data_bytes), (80, 20, Some(100 << 30)));
        for (args, says) in [
            (vec!["--auto-extend-threshold", "80"], "grow a loop pool with a larger --loop-data-size"),
            ([&lvm[..], &["--auto-extend-threshold", "30"][..]].concat(), "from 50 to 95"),
            ([&lvm[..], &["--auto-extend-threshold", "99"][..]].concat(), "from 50 to 95"),
            (
                [&lvm[..], &["--auto-extend-threshold", "80", "--auto-extend-percent", "0"][..]].concat(),
                "from 1 to 100",
            ),
            ([&lvm[..], &["--auto-extend-threshold", "80", "--auto-extend-max-size", "lots"][..]].concat(), "max-size"),
        ] {
            let err = check(&args).unwrap_err().to_string();
            assert!(err.contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn metadata_size_follows_the_kernel_guidance() {
        assert_eq!(default_meta_bytes(1 << 30, 64 << 10), 4 << 20);
        assert_eq!(default_meta_bytes(1 << 40, 64 << 10), 768 << 20);
        assert_eq!(default_meta_bytes(1 << 50, 64 << 10), 16 << 30);
    }
}
