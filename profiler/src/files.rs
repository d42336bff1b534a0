//! Reading the files a user names (executables, config files): regular files only, and at most
//! a bound, so `/dev/zero` cannot fill the memory and a FIFO cannot hang mapscope.
use std::{
    fs::File,
    io::{self, Read as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

/// Largest executable read (a Go binary of a big service is a few hundred MB).
pub const MAX_EXECUTABLE: u64 = 2 << 30;
/// Largest config or web config file read.
pub const MAX_CONFIG: u64 = 1 << 20;

/// The whole of `path`, if it is a regular file of at most `max` bytes. A FIFO, a device or a
/// folder is refused with `InvalidInput` before anything is read (opened without blocking, so
/// a FIFO with no writer returns at once), and so is a larger file.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        let kind = if metadata.is_dir() {
            "a folder"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is {kind}", path.display()),
        ));
    }
    if metadata.len() > max {
        return Err(too_large(path, max));
    }
    let mut data = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // The size may change while read (a file being written): never past the bound.
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(too_large(path, max));
    }
    Ok(data)
}

fn too_large(path: &Path, max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is larger than {} MiB", path.display(), max >> 20),
    )
}

/// `read_regular`, as UTF-8 text.
pub fn read_regular_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, max)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not UTF-8 text", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_folders_fifos_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let kind = |path: &Path, max| read_regular(path, max).unwrap_err().kind();
        assert_eq!(
            kind(Path::new("/dev/zero"), MAX_CONFIG),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(kind(dir.path(), MAX_CONFIG), io::ErrorKind::InvalidInput);
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert_eq!(kind(&fifo, MAX_CONFIG), io::ErrorKind::InvalidInput);
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        assert_eq!(kind(&big, 1024), io::ErrorKind::InvalidInput);
        assert_eq!(read_regular(&big, 2048).unwrap().len(), 2048);
        assert_eq!(
            kind(&dir.path().join("missing"), 1),
            io::ErrorKind::NotFound
        );
    }
}
