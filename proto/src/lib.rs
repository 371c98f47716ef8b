//! The `fracmap.v1` gRPC API (`fracmap/v1/fracmap.proto`): prost messages, the tonic client
//! and server, and the encoded file descriptor set that the reflection service serves.
//! One crate so the server and the client compile the same definitions once.

// A header and a chunk share a oneof: boxing the header would cost every chunk a branch for
// no memory that matters (one message at a time per stream).
#![allow(clippy::large_enum_variant)]

tonic::include_proto!("fracmap.v1");

/// The encoded file descriptor set of `fracmap.v1` and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fracmap_descriptor");

/// HTTP/2 flow-control window of one stream, bytes, for servers and clients of this API.
/// hyper's default (1 MiB) limits a 300 MB volume to a few hundred MB/s even on loopback: the
/// sender waits a round trip for every window; 8 MiB keeps it streaming.
pub const HTTP2_STREAM_WINDOW: u32 = 8 << 20;

/// HTTP/2 flow-control window of one connection (all its streams), bytes.
pub const HTTP2_CONNECTION_WINDOW: u32 = 16 << 20;
