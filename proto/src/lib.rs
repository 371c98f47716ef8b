//! The `fracmap.v1` gRPC API (`fracmap/v1/fracmap.proto`): prost messages, the tonic client
//! and server, and the encoded file descriptor set that the reflection service serves.
//! One crate so the server and the client compile the same definitions once.

// A header and a chunk share a oneof: boxing the header would cost every chunk a branch for
// no memory that matters (one message at a time per stream).
#![allow(clippy::large_enum_variant)]

tonic::include_proto!("fracmap.v1");

/// The encoded file descriptor set of `fracmap.v1` and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fracmap_descriptor");
