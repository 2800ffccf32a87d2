//! Compiles the CSI and kubelet plugin-registration protobuf definitions with protox (pure Rust, no
//! `protoc`) and generates the tonic server and client code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    println!("cargo:rerun-if-changed=proto/pluginregistration.proto");
    let fds = protox::compile(["proto/csi.proto", "proto/pluginregistration.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Calls a service does not implement answer UNIMPLEMENTED (the capability endpoint).
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
