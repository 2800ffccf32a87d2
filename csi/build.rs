//! Compiles the CSI, kubelet plugin-registration and operator (admin) protobuf definitions with
//! protox (pure Rust, no `protoc`) and generates the tonic server and client code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    println!("cargo:rerun-if-changed=proto/pluginregistration.proto");
    println!("cargo:rerun-if-changed=proto/admin.proto");
    let fds = protox::compile(["proto/csi.proto", "proto/pluginregistration.proto", "proto/admin.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Calls a service does not implement answer UNIMPLEMENTED (the capability endpoint).
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
