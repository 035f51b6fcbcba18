//! Memory shared by the httpd parent and every process it forks: an
//! anonymous `MAP_SHARED` mapping (what `apr_shm_create` makes when given
//! no file name), created once in the parent and inherited across fork.
//!
//! Made here rather than with apr_shm_create on pconf so that it outlives
//! a graceful restart: pconf is cleared then, while children of the old
//! generation still write their status into the segment.

use std::io;
use std::ptr::NonNull;

/// A zero-filled shared mapping of `len` bytes, page-aligned, never
/// unmapped (it lives as long as the process and its children).
pub fn shared_zeroed(len: usize) -> io::Result<NonNull<u8>> {
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
    }
    // SAFETY: a new anonymous mapping (no address hint, no file): it
    // aliases no memory of this process, and the result is checked.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_is_zeroed_and_shared_with_a_forked_child() {
        let ptr = shared_zeroed(4096).unwrap();
        // SAFETY: 4096 bytes were just mapped read-write.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), 4096) };
        assert!(bytes.iter().all(|b| *b == 0));
        // SAFETY: the child only writes one byte of the mapping and exits
        // at once with _exit, running no destructor or atexit handler.
        match unsafe { libc::fork() } {
            0 => unsafe {
                *ptr.as_ptr() = 42;
                libc::_exit(0)
            },
            child => {
                assert!(child > 0);
                let mut status = 0;
                // SAFETY: waiting for the child forked above.
                unsafe { libc::waitpid(child, &mut status, 0) };
                assert_eq!(bytes[0], 42);
            }
        }
    }
}
