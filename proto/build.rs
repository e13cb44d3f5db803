//! Generates the gRPC code from `proto/cairn.proto` with tonic (needs `protoc`).

fn main() {
    tonic_prost_build::configure()
        // A secret's value must not reach a log through `{:?}`: its Debug is written by hand.
        .skip_debug(["cairn.v1.SecretValue"])
        .compile_protos(&["proto/cairn.proto"], &["proto"])
        .expect(
            "compile proto/cairn.proto (is protoc installed? apt-get install protobuf-compiler)",
        );
}
