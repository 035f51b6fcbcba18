//! Running a close plan (rule R10 in docs/DESIGN.md): the one place where
//! a relayed connection's sockets are closed. What each side is told, and
//! until when, is the session's decision (`session::close_plan`).

use crate::relay::io_buffers::READ_MIN;
use crate::relay::methods;
use crate::relay::session::close_plan::{CloseOkWait, ClosePlan, SideClose, close_ok_scan};
use crate::relay::upstream::BrokerIo;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long to keep reading a client after sending it our last frame, so
/// that its reply does not turn into a reset that destroys what it has not
/// read yet.
const LINGER: Duration = Duration::from_millis(500);

/// Play out `plan` on both sockets at once (a side the plan drops is left
/// for the caller to drop). `broker` is None before there is one.
pub async fn execute(
    plan: ClosePlan,
    client: &mut TcpStream,
    broker: Option<&mut Box<dyn BrokerIo>>,
) {
    let deadline = Instant::from_std(plan.deadline);
    let client_side = async {
        if let SideClose::Finish { queue, close, .. } = plan.client {
            finish_client(client, queue, close, deadline).await;
        }
    };
    let broker_side = async {
        if let (
            SideClose::Finish {
                queue,
                close,
                await_close_ok,
                unread,
            },
            Some(broker),
        ) = (plan.broker, broker)
        {
            finish_broker(broker, queue, close, unread, await_close_ok, deadline).await;
        }
    };
    tokio::join!(client_side, broker_side);
}

async fn write_queue<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    queue: VecDeque<Bytes>,
) -> std::io::Result<()> {
    for chunk in queue {
        writer.write_all(&chunk).await?;
    }
    writer.flush().await
}

/// Send the client what it is still owed, then close: FIN first, and keep
/// reading (discarding) briefly so the client's own reply does not turn
/// into a reset that destroys the Close it has not read yet.
pub(crate) async fn finish_client(
    client: &mut TcpStream,
    mut queue: VecDeque<Bytes>,
    close: Option<Bytes>,
    deadline: Instant,
) {
    if let Some(close) = close {
        queue.push_back(close);
    }
    if tokio::time::timeout_at(deadline, write_queue(client, queue))
        .await
        .is_err()
    {
        return;
    }
    let _ = client.shutdown().await;
    let linger_until = deadline.min(Instant::now() + LINGER);
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout_at(linger_until, async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Send the broker what it is still owed, then, when `wait_close_ok`,
/// wait for its CloseOk (answering a Close of its own with CloseOk) so
/// the broker logs a clean client-initiated close. Bounded by `deadline`.
async fn finish_broker(
    broker: &mut Box<dyn BrokerIo>,
    mut queue: VecDeque<Bytes>,
    close: Option<Bytes>,
    mut inbuf: BytesMut,
    wait_close_ok: bool,
    deadline: Instant,
) {
    if let Some(close) = close {
        queue.push_back(close);
    }
    let _ = tokio::time::timeout_at(deadline, async {
        write_queue(broker, queue).await?;
        if wait_close_ok {
            await_close_ok(broker, &mut inbuf).await?;
        }
        broker.shutdown().await
    })
    .await;
}

async fn await_close_ok<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    broker: &mut S,
    inbuf: &mut BytesMut,
) -> std::io::Result<()> {
    loop {
        match close_ok_scan(inbuf) {
            CloseOkWait::Done => return Ok(()),
            CloseOkWait::AnswerCloseOk => {
                broker.write_all(&methods::close_ok_frame()).await?;
                broker.flush().await?;
                return Ok(());
            }
            CloseOkWait::GiveUp => return Ok(()),
            CloseOkWait::More => {}
        }
        inbuf.reserve(READ_MIN);
        if broker.read_buf(inbuf).await? == 0 {
            return Ok(());
        }
    }
}
