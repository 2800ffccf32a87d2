mod vm;
use std::time::Duration;
fn main() -> anyhow::Result<()> {
    vm::run_in_vm("smoke", "uname -r; ls /dev/mapper; cat /proc/misc | grep device-mapper; dmsetup targets; losetup -f", Duration::from_secs(120))
}
