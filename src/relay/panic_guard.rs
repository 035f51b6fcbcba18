//! Panics inside the relay's tasks (issue 11, item 8). tokio swallows a
//! panic in a spawned task: the task's sockets would drop without a
//! Connection.Close and nothing would be logged, and a panicking acceptor
//! would leave a listener nobody accepts on. The relay thread's own
//! `catch_unwind` (relay_thread.rs) never sees these. So each task, and the
//! pump of each connection, catches its own.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The text of a panic's payload (also the Apache layer's, for panics at
/// its entry points).
pub fn message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "unknown panic"
    }
}

/// Replace std's default panic hook (for this module's Rust code only: a
/// cdylib has its own std) by one that prints the same lines but reads the
/// environment now, not at the first panic: std's reads `RUST_BACKTRACE`
/// then, which would be on the relay thread (rule R18). Call before the
/// relay thread starts; later calls do nothing.
pub fn install_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let backtrace = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("<unnamed>");
            if backtrace {
                let trace = std::backtrace::Backtrace::force_capture();
                eprintln!("\nthread '{name}' {info}\nstack backtrace:\n{trace}");
            } else {
                eprintln!("\nthread '{name}' {info}");
            }
        }));
    });
}

/// Run `f`; a panic becomes `Err(its message)`.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    // What a panicking `f` leaves behind is not used again except to be
    // closed or dropped (the connection ends, the task restarts).
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| message(p.as_ref()).to_string())
}

/// A future whose panic while polled becomes `Err(its message)`; it is not
/// polled again after that.
pub struct CatchPanic<F> {
    inner: Option<Pin<Box<F>>>,
}

impl<F: Future> CatchPanic<F> {
    pub fn new(future: F) -> CatchPanic<F> {
        CatchPanic {
            inner: Some(Box::pin(future)),
        }
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // CatchPanic is Unpin (it only holds a Box).
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err("polled after a panic".to_string()));
        };
        match catch(|| inner.as_mut().poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(message) => {
                this.inner = None;
                Poll::Ready(Err(message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_polled_is_an_error_with_its_message() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ok = rt.block_on(CatchPanic::new(async { 7 }));
        assert_eq!(ok, Ok(7));
        let failed = rt.block_on(CatchPanic::new(async {
            tokio::task::yield_now().await;
            if ok == Ok(7) {
                panic!("boom {}", 42);
            }
            1
        }));
        assert_eq!(failed, Err("boom 42".to_string()));
        assert_eq!(
            catch(|| panic!("static")),
            Err::<(), _>("static".to_string())
        );
    }
}
