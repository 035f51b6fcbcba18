//! haproxy as the third path of P1/P2 (issue 13): the best general-purpose
//! TCP proxy, measured exactly like the relay, so the relay has a reachable
//! bar on a 2-core machine where any process in the path competes with the
//! client and the broker for the same cores.

use super::Res;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Haproxy {
    child: Child,
    workdir: String,
    pub addr: SocketAddr,
}

impl Haproxy {
    /// Start haproxy in the foreground on a free loopback port, forwarding
    /// to `broker`. One thread (the relay has one per child), `mode tcp`,
    /// splice on where the kernel allows it (`splice-auto`).
    pub fn start(broker: SocketAddr, workdir: String) -> Res<Haproxy> {
        let port = {
            // Ask the kernel for a free port; haproxy binds it right after.
            let probe = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            probe.local_addr().map_err(|e| e.to_string())?.port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        std::fs::create_dir_all(&workdir).map_err(|e| format!("{workdir}: {e}"))?;
        let cfg = format!("{workdir}/haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n    nbthread 1\n    maxconn 1024\n\
                 defaults\n    mode tcp\n    option splice-auto\n    timeout connect 5s\n\
                 \x20   timeout client 1h\n    timeout server 1h\n\
                 listen amqp\n    bind {addr}\n    server broker {broker}\n"
            ),
        )
        .map_err(|e| format!("{cfg}: {e}"))?;
        let child = Command::new("haproxy")
            .args(["-db", "-f", &cfg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start haproxy (is the haproxy package installed? make deps installs it): {e}"))?;
        let mut haproxy = Haproxy {
            child,
            workdir,
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                return Err(format!("haproxy exited at start: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("haproxy did not listen on {addr} within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(haproxy)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}
