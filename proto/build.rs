//! Generates the gRPC code from `proto/cairn.proto` with tonic (needs `protoc`).

fn main() {
    tonic_prost_build::configure()
        // A secret's value must not reach a log through `{:?}`: its Debug is written by hand.
        .skip_debug(["cairn.v1.SecretValue"])
        // Per-call buffers of 1 KiB instead of 8 KiB each way (src/codec.rs says why).
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_protos(&["proto/cairn.proto"], &["proto"])
        .expect(
            "compile proto/cairn.proto (is protoc installed? apt-get install protobuf-compiler)",
        );
}
