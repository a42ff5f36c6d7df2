//! nftables through libnftables — the library the `nft` command is a thin front end of — loaded
//! at run time. One context lives as long as the speaker, so nft's cache of the table survives
//! from one transaction to the next: a new `nft` process must first read the whole table, which
//! at 10,000 Services costs more than the change itself (docs/BENCHMARKS.md).

use std::ffi::{CStr, CString, c_char, c_int, c_void};

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// The library's file name (Debian's `libnftables1`, which the `nft` command depends on).
const LIBRARY: &CStr = c"libnftables.so.1";

/// A libnftables context; not shared between threads at once (use it behind a mutex).
pub struct Nftables {
    library: *mut c_void,
    ctx: *mut c_void,
    free: CtxFree,
    run: RunCmd,
    output: CtxGetBuffer,
    error: CtxGetBuffer,
}

// SAFETY: the context is only used by one thread at a time (`&mut self`), which libnftables
// allows; it holds no thread-local state.
unsafe impl Send for Nftables {}

/// Looks a symbol up and gives it the type the library's header declares.
///
/// # Safety
/// `T` must be the function pointer type of `name` in libnftables' `nftables.h`.
unsafe fn symbol<T: Copy>(library: *mut c_void, name: &CStr) -> Result<T, String> {
    // SAFETY: `library` is a live handle from dlopen and `name` is NUL-terminated.
    let f = unsafe { libc::dlsym(library, name.as_ptr()) };
    if f.is_null() {
        return Err(format!("libnftables has no {}", name.to_string_lossy()));
    }
    // SAFETY: the caller vouches for the type; a data pointer and a function pointer have the
    // same size on the platforms Linux runs on.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&f) })
}

impl Nftables {
    /// Loads the library and makes a context whose output and errors are captured.
    pub fn open() -> Result<Nftables, String> {
        // SAFETY: dlopen with a NUL-terminated name; failure is a null handle.
        let library = unsafe { libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if library.is_null() {
            return Err(format!("{} could not be loaded", LIBRARY.to_string_lossy()));
        }
        let close = |e: String| {
            // SAFETY: the handle came from dlopen above and nothing from it is kept.
            unsafe { libc::dlclose(library) };
            e
        };
        // SAFETY: each type below is the one nftables.h declares for the symbol.
        let (new, free, buffer_output, buffer_error, run, output, error) = unsafe {
            (
                symbol::<CtxNew>(library, c"nft_ctx_new").map_err(close)?,
                symbol::<CtxFree>(library, c"nft_ctx_free").map_err(close)?,
                symbol::<CtxBuffer>(library, c"nft_ctx_buffer_output").map_err(close)?,
                symbol::<CtxBuffer>(library, c"nft_ctx_buffer_error").map_err(close)?,
                symbol::<RunCmd>(library, c"nft_run_cmd_from_buffer").map_err(close)?,
                symbol::<CtxGetBuffer>(library, c"nft_ctx_get_output_buffer").map_err(close)?,
                symbol::<CtxGetBuffer>(library, c"nft_ctx_get_error_buffer").map_err(close)?,
            )
        };
        // SAFETY: NFT_CTX_DEFAULT is 0; the buffer calls take the fresh context.
        let ctx = unsafe { new(0) };
        if ctx.is_null() {
            return Err(close("nft_ctx_new failed".into()));
        }
        // SAFETY: `ctx` is live.
        if unsafe { buffer_output(ctx) } != 0 || unsafe { buffer_error(ctx) } != 0 {
            // SAFETY: `ctx` is live and not used again.
            unsafe { free(ctx) };
            return Err(close("libnftables could not buffer its output".into()));
        }
        Ok(Nftables { library, ctx, free, run, output, error })
    }

    /// Runs `commands` (nft's input language) as one transaction; the error is nft's message.
    pub fn run(&mut self, commands: &str) -> Result<(), String> {
        let text = CString::new(commands).map_err(|_| "the ruleset contains a NUL byte".to_string())?;
        // SAFETY: `ctx` is live and used by this thread alone (&mut self); `text` outlives the call.
        let rc = unsafe { (self.run)(self.ctx, text.as_ptr()) };
        // Reading a buffer also empties it, so it does not grow from one call to the next.
        // SAFETY: the returned strings belong to the context and are copied before the next call.
        let _ = unsafe { CStr::from_ptr((self.output)(self.ctx)) };
        let error = unsafe { CStr::from_ptr((self.error)(self.ctx)) }.to_string_lossy().trim().to_string();
        if rc == 0 { Ok(()) } else { Err(error) }
    }
}

impl Drop for Nftables {
    fn drop(&mut self) {
        // SAFETY: both were created in `open` and are not used after this.
        unsafe {
            (self.free)(self.ctx);
            libc::dlclose(self.library);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_nfts_message() {
        // Loading needs the library, not root; without it there is nothing to test here (the
        // speaker then runs the `nft` command instead, which the lab tests cover).
        let Ok(mut nft) = Nftables::open() else {
            assert!(std::env::var_os("CI").is_none(), "CI installs nftables, so libnftables must load");
            return;
        };
        let e = nft.run("this is not nft\n").unwrap_err();
        assert!(e.contains("syntax error"), "{e}");
        // A check-only command succeeds without touching anything (-c is not needed to parse).
        assert!(nft.run("").is_ok());
    }
}
