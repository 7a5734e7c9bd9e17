//! A mount that hangs, as an NFS mount whose server is gone does.

use std::path::{Path, PathBuf};

/// A FUSE file system whose daemon never answers (nobody reads its
/// `/dev/fuse`): every look-up under it blocks, as on an NFS mount whose
/// server is gone. Unmounted on drop, which also fails whatever still waits.
pub struct HungMount {
    dir: PathBuf,
    _fuse: std::fs::File,
}

impl HungMount {
    pub fn new(dir: &Path) -> HungMount {
        use std::ffi::CString;
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir_all(dir).unwrap();
        let fuse = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("/dev/fuse (the test kit runs as root)");
        let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let options = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            fuse.as_raw_fd()
        );
        let options = CString::new(options).unwrap();
        // SAFETY: mount with NUL-terminated strings that outlive the call.
        let mounted = unsafe {
            libc::mount(
                c"grestart-hung".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            mounted,
            0,
            "mount a FUSE file system on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        HungMount {
            dir: dir.to_path_buf(),
            _fuse: fuse,
        }
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let target = std::ffi::CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: umount2 with a NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}
