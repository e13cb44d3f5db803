//! Generates the gRPC code from `proto/cairn.proto` with tonic (needs `protoc`).

fn main() {
    tonic_prost_build::configure()
        .compile_protos(&["proto/cairn.proto"], &["proto"])
        .expect(
            "compile proto/cairn.proto (is protoc installed? apt-get install protobuf-compiler)",
        );
}
