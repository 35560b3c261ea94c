//! Routes libbpf's and libxdp's own messages (printed to stderr by default)
//! into `tracing`, so "no bpffs, falling back" notes do not clutter a
//! terminal and real warnings land in the log with everything else.

#![allow(unsafe_code)]

use std::ffi::c_char;
use std::sync::Once;

unsafe extern "C" {
    fn vsnprintf(
        buf: *mut c_char,
        size: usize,
        fmt: *const c_char,
        ap: *mut libxdp_sys::__va_list_tag,
    ) -> i32;
}

fn emit(lib: &str, level: u32, fmt: *const c_char, ap: *mut libxdp_sys::__va_list_tag) {
    let mut buf = [0 as c_char; 512];
    // SAFETY: `buf` is writable for its full length, `fmt` and `ap` come
    // straight from the library's print callback, and vsnprintf never
    // writes past `size` bytes (NUL included).
    let n = unsafe { vsnprintf(buf.as_mut_ptr(), buf.len(), fmt, ap) };
    if n <= 0 {
        return;
    }
    let len = (n as usize).min(buf.len() - 1);
    let bytes: Vec<u8> = buf[..len].iter().map(|&c| c as u8).collect();
    let msg = String::from_utf8_lossy(&bytes);
    let msg = msg.trim_end();
    // Level 0 is WARN in both libraries; it includes benign notes such as
    // the missing bpffs, so it is logged at info.
    if level == 0 {
        tracing::info!(target: "hoststack_drivers::xdp", "{lib}: {msg}");
    } else {
        tracing::debug!(target: "hoststack_drivers::xdp", "{lib}: {msg}");
    }
}

unsafe extern "C" fn libxdp_print(
    level: u32,
    fmt: *const c_char,
    ap: *mut libxdp_sys::__va_list_tag,
) -> i32 {
    emit("libxdp", level, fmt, ap);
    0
}

unsafe extern "C" fn libbpf_print(
    level: u32,
    fmt: *const c_char,
    ap: *mut libbpf_sys::__va_list_tag,
) -> i32 {
    emit("libbpf", level, fmt, ap.cast());
    0
}

/// Installs the print hooks once per process.
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: both setters only store the function pointer; the
        // callbacks have the exact C signatures the libraries expect.
        unsafe {
            libxdp_sys::libxdp_set_print(Some(libxdp_print));
            libbpf_sys::libbpf_set_print(Some(libbpf_print));
        }
    });
}
