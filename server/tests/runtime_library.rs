//! A wrong ONNX Runtime library is a clear error, never a panic. In a test binary of its own:
//! ort loads one library per process, and these tests must run before any succeeds.

use std::io::Write;
use std::path::Path;

use fracmap_server::{OnnxRuntime, RuntimeError};

#[test]
fn missing_library_names_the_path_and_the_setup_script() {
    let path = Path::new("/nonexistent/fracmap/libonnxruntime.so");
    let error = OnnxRuntime::init(path).err().expect("a missing library cannot load");
    assert!(matches!(error, RuntimeError::LibraryMissing { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("bash scripts/setup.sh"), "{message}");
}

#[test]
fn a_file_that_is_not_a_library_is_a_load_error() {
    let mut not_a_library = tempfile::NamedTempFile::new().unwrap();
    not_a_library.write_all(b"not a shared library").unwrap();
    let error = OnnxRuntime::init(not_a_library.path()).err().expect("a text file cannot load");
    assert!(matches!(error, RuntimeError::LibraryLoad { .. }), "{error:?}");
}
