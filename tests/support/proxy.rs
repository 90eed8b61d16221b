//! [`FaultProxy`]: a loopback TCP proxy with switchable faults.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// What a [`FaultProxy`] does with traffic; switched with [`FaultProxy::set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward bytes both ways.
    Pass,
    /// Forward each chunk (both directions) `d` after it was read. Chunks keep their order,
    /// and requests in flight are delayed in parallel (a pipeline of N requests takes about
    /// `2 d`, not `2 N d`).
    Delay(Duration),
    /// Accept connections and read from clients, but forward nothing and answer nothing;
    /// connections stay open. A connection that lost any byte this way stays black-holed
    /// for good, even after switching back to `Pass` (resuming would desynchronise the RESP
    /// stream); it ends when the client closes it, on `Reset`, or when the proxy drops.
    /// Connections that carried no traffic while black-holed resume normally.
    Blackhole,
    /// Close every current and new client connection at once, with an RST.
    Reset,
}

/// A TCP proxy on `127.0.0.1:<random port>` in front of `upstream`.
///
/// Runs as tasks on the Tokio runtime that calls [`FaultProxy::start`] (current-thread or
/// multi-thread both work; with a current-thread runtime the test must not block the thread
/// while talking through the proxy, e.g. with a synchronous Redis connection). Every
/// connection dials `upstream` anew, so a proxy keeps working across
/// [`super::RedisServer::restart`]; if the dial fails, the client gets an RST.
/// Dropping the proxy aborts its tasks; the listener and open connections are closed as
/// soon as the runtime processes the abort.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    accepted: Arc<AtomicUsize>,
    acceptor: JoinHandle<()>,
}

impl FaultProxy {
    /// Binds a free loopback port and starts proxying to `upstream` in [`Fault::Pass`] mode.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("FaultProxy: cannot bind a loopback port");
        let addr = listener.local_addr().expect("FaultProxy: local_addr");
        let (fault, rx) = watch::channel(Fault::Pass);
        let accepted = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio::spawn(accept_loop(listener, upstream, rx, Arc::clone(&accepted)));
        FaultProxy {
            addr,
            upstream,
            fault,
            accepted,
            acceptor,
        }
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `redis://127.0.0.1:PORT/` for the proxy (no password: build your own URL if the
    /// upstream needs one, e.g. `format!("redis://:pw@{}/", proxy.addr())`).
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Switches the behaviour for existing and new connections at once.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The current behaviour.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Connections accepted so far (including ones reset at once). Counted when the proxy
    /// task accepts, which may be a moment after the client's `connect` returned: wait for
    /// it with [`super::eventually`].
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The connection tasks live in a JoinSet owned by the acceptor task: dropping that
        // task aborts them too.
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    rx: watch::Receiver<Fault>,
    accepted: Arc<AtomicUsize>,
) {
    let mut conns = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                accepted.fetch_add(1, Ordering::SeqCst);
                conns.spawn(handle(client, upstream, rx.clone()));
            }
            // Transient (ECONNABORTED, EMFILE, ...): back off briefly and go on.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
        while conns.try_join_next().is_some() {}
    }
}

/// How one direction (or the whole connection) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// EOF or an I/O error on either side.
    Closed,
    /// [`Fault::Reset`] was set.
    Reset,
}

/// Closes `stream` with an RST (SO_LINGER 0), or at least closes it.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Resolves once the fault is [`Fault::Reset`] (now or later). Cancel-safe.
async fn until_reset(rx: &mut watch::Receiver<Fault>) {
    loop {
        if *rx.borrow_and_update() == Fault::Reset {
            return;
        }
        if rx.changed().await.is_err() {
            // The proxy is gone; its tasks are being aborted.
            std::future::pending::<()>().await;
        }
    }
}

async fn handle(mut client: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<Fault>) {
    let _ = client.set_nodelay(true);
    let initial = *rx.borrow_and_update();
    match initial {
        Fault::Reset => return reset(client),
        Fault::Blackhole => return blackhole(client, rx).await,
        Fault::Pass | Fault::Delay(_) => {}
    }
    let dialed = {
        let mut reset_rx = rx.clone();
        tokio::select! {
            r = TcpStream::connect(upstream) => r.ok(),
            () = until_reset(&mut reset_rx) => None,
        }
    };
    let Some(mut server) = dialed else {
        return reset(client);
    };
    let _ = server.set_nodelay(true);

    let dead = AtomicBool::new(false);
    let end = {
        let (mut client_rd, mut client_wr) = client.split();
        let (mut server_rd, mut server_wr) = server.split();
        tokio::select! {
            e = pump(&mut client_rd, &mut server_wr, rx.clone(), &dead) => e,
            e = pump(&mut server_rd, &mut client_wr, rx.clone(), &dead) => e,
        }
    };
    drop(server);
    match end {
        End::Reset => reset(client),
        // A black-holed client must not learn that the upstream went away.
        End::Closed if dead.load(Ordering::SeqCst) => blackhole(client, rx).await,
        End::Closed => {} // dropping `client` closes it normally
    }
}

/// Reads and discards from `client` until it closes (or Reset), never answering.
async fn blackhole(mut client: TcpStream, mut rx: watch::Receiver<Fault>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let end = tokio::select! {
            r = client.read(&mut buf) => match r {
                Ok(0) | Err(_) => Some(End::Closed),
                Ok(_) => None,
            },
            () = until_reset(&mut rx) => Some(End::Reset),
        };
        match end {
            None => {}
            Some(End::Closed) => return,
            Some(End::Reset) => return reset(client),
        }
    }
}

/// Copies `from` → `to` under the current fault, until EOF, an I/O error or Reset.
/// `dead` is shared by both directions of a connection: set once any byte is black-holed.
async fn pump<R, W>(from: &mut R, to: &mut W, rx: watch::Receiver<Fault>, dead: &AtomicBool) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // The reader stamps each chunk with the time it is due; the writer sends chunks in
    // order once due. So delays overlap instead of adding up.
    let (queue_tx, mut queue_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut reader_rx = rx.clone();
    let mut writer_rx = rx;

    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return End::Closed,
                    Ok(n) => n,
                },
                () = until_reset(&mut reader_rx) => return End::Reset,
            };
            let now = Instant::now();
            let fault = *reader_rx.borrow();
            let due = match fault {
                Fault::Reset => return End::Reset,
                Fault::Blackhole => {
                    dead.store(true, Ordering::SeqCst);
                    continue;
                }
                _ if dead.load(Ordering::SeqCst) => continue,
                Fault::Pass => now,
                Fault::Delay(d) => now + d,
            };
            if queue_tx.send((due, buf[..n].to_vec())).is_err() {
                return End::Closed;
            }
        }
        // `queue_tx` drops here, so the writer drains the queue and then stops.
    };

    let writer = async move {
        while let Some((due, chunk)) = queue_rx.recv().await {
            if due > Instant::now() {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = until_reset(&mut writer_rx) => return End::Reset,
                }
            }
            // The fault may have changed while the chunk was held.
            let fault = *writer_rx.borrow();
            match fault {
                Fault::Reset => return End::Reset,
                Fault::Blackhole => {
                    dead.store(true, Ordering::SeqCst);
                    continue;
                }
                _ if dead.load(Ordering::SeqCst) => continue,
                Fault::Pass | Fault::Delay(_) => {}
            }
            tokio::select! {
                r = to.write_all(&chunk) => {
                    if r.is_err() {
                        return End::Closed;
                    }
                }
                () = until_reset(&mut writer_rx) => return End::Reset,
            }
        }
        End::Closed
    };

    tokio::pin!(reader, writer);
    tokio::select! {
        e = &mut reader => match e {
            End::Closed => writer.await, // deliver what is still queued, then close
            End::Reset => End::Reset,
        },
        e = &mut writer => e,
    }
}
