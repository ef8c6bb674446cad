//! The durability floor for the ingest benchmark (bench/ingest.py, server `durable-sink`).
//!
//! `durable-sink HOST:PORT DIR [THREADS]`: an SMTP server that does only what a server that
//! fsyncs before its 250 and delivers into Maildir must do, in the cheapest ways this project
//! has measured — and nothing else: fixed replies (no parsing beyond a command's first four
//! letters), no scripts, no log, no metrics. The sessions run on one event loop (THREADS = 0,
//! the default, as smtp-sink's single process) or on THREADS runtime workers.
//!
//! `FLOOR_DESIGN` picks how a message is kept:
//! - `spool` (default; mailflow's design): one spool thread takes every message waiting,
//!   writes them over a reused, preallocated slot file and `fdatasync`s it (nothing but data
//!   blocks to flush), then the 250s; a delivery thread then writes them into `DIR/tmp/`, makes
//!   the batch durable with one `syncfs(2)`, renames into `DIR/new/`, fsyncs `new/` once, and
//!   frees the slot.
//! - `direct`: no spool; the Maildir batch above happens before the 250 (two flushes, one of
//!   them for metadata, on the way to every 250).
//! - `none`: nothing stored (the SMTP exchange alone, to compare with smtp-sink).
//!
//! Not a mail server (a crash loses the slots' contents: there is no replay): it shows how
//! close to smtp-sink, which stores nothing, a server that keeps the promise can get on a
//! given machine.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

extern "C" {
    fn syncfs(fd: i32) -> i32;
}

#[derive(Clone, Copy, PartialEq)]
enum Design {
    Spool,
    Direct,
    Nothing,
}

/// One message, and where to say it is durable.
type Job = (Vec<u8>, oneshot::Sender<bool>);

/// Slot files kept ready (more are never needed: the delivery thread frees them in order).
const SLOTS: usize = 64;
const SLOT_SIZE: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: durable-sink HOST:PORT DIR [THREADS]");
        std::process::exit(2);
    }
    let design = match std::env::var("FLOOR_DESIGN").as_deref() {
        Ok("direct") => Design::Direct,
        Ok("none") => Design::Nothing,
        _ => Design::Spool,
    };
    if let Err(e) = run(&args[1], Path::new(&args[2]), args.get(3).and_then(|t| t.parse().ok()).unwrap_or(0), design) {
        eprintln!("durable-sink: {e}");
        std::process::exit(1);
    }
}

fn run(addr: &str, dir: &Path, threads: usize, design: Design) -> std::io::Result<()> {
    for sub in ["tmp", "new", "cur", "spool"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let (tx, rx) = mpsc::channel::<Job>();
    let maildir = Maildir { dir: dir.to_path_buf(), seq: 0 };
    match design {
        Design::Spool => {
            let slots = open_slots(&dir.join("spool"))?;
            let (free_tx, free_rx) = mpsc::channel();
            for i in 0..slots.len() {
                let _ = free_tx.send(i);
            }
            let (deliver_tx, deliver_rx) = mpsc::channel();
            std::thread::spawn(move || spool_thread(&slots, rx, free_rx, deliver_tx));
            std::thread::spawn(move || delivery_thread(maildir, deliver_rx, free_tx));
        }
        Design::Direct => {
            std::thread::spawn(move || direct_thread(maildir, rx));
        }
        Design::Nothing => {}
    }
    let runtime = if threads == 0 {
        tokio::runtime::Builder::new_current_thread().enable_io().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_io().build()?
    };
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let tx = (design != Design::Nothing).then(|| tx.clone());
            tokio::spawn(async move {
                let _ = serve(stream, tx).await;
            });
        }
    })
}

/// Preallocated slot files whose blocks are written once here, so that overwriting one and
/// `fdatasync` flushes data blocks only.
fn open_slots(dir: &Path) -> std::io::Result<Vec<File>> {
    let zeros = vec![0u8; SLOT_SIZE];
    let mut slots = Vec::with_capacity(SLOTS);
    for i in 0..SLOTS {
        let mut f =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join(i.to_string()))?;
        f.write_all(&zeros)?;
        f.sync_all()?;
        slots.push(f);
    }
    File::open(dir)?.sync_all()?;
    Ok(slots)
}

/// Group commit into the slots: every message waiting goes into a free slot, one
/// `fdatasync`, then the 250s; the batch then goes to delivery, which frees the slot.
fn spool_thread(
    slots: &[File],
    rx: mpsc::Receiver<Job>,
    free: mpsc::Receiver<usize>,
    deliver: mpsc::Sender<(usize, Vec<Vec<u8>>)>,
) {
    let mut buf = Vec::with_capacity(SLOT_SIZE);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut bytes = batch[0].0.len();
        while bytes < SLOT_SIZE / 2 {
            let Ok(job) = rx.try_recv() else { break };
            bytes += job.0.len();
            batch.push(job);
        }
        let Ok(slot) = free.recv() else { return };
        buf.clear();
        for (message, _) in &batch {
            buf.extend_from_slice(&(message.len() as u64).to_le_bytes());
            buf.extend_from_slice(message);
        }
        let file = &slots[slot];
        let stored = file.write_all_at(&buf, 0).and_then(|()| file.sync_data());
        if let Err(e) = &stored {
            eprintln!("durable-sink: spool: {e}");
        }
        let mut messages = Vec::with_capacity(batch.len());
        for (message, done) in batch {
            let _ = done.send(stored.is_ok());
            messages.push(message);
        }
        if deliver.send((slot, messages)).is_err() {
            return;
        }
    }
}

/// Delivers every spooled batch waiting as one Maildir batch, then frees their slots.
fn delivery_thread(mut maildir: Maildir, rx: mpsc::Receiver<(usize, Vec<Vec<u8>>)>, free: mpsc::Sender<usize>) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        batches.extend(rx.try_iter());
        let messages: Vec<&[u8]> = batches.iter().flat_map(|(_, m)| m.iter().map(Vec::as_slice)).collect();
        if let Err(e) = maildir.store(&messages) {
            // A real server would retry; the bench counts files, so this shows as missing mail.
            eprintln!("durable-sink: delivery: {e}");
        }
        for (slot, _) in batches {
            let _ = free.send(slot);
        }
    }
}

/// No spool: every message waiting goes into the Maildir as one batch before its 250.
fn direct_thread(mut maildir: Maildir, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let messages: Vec<&[u8]> = batch.iter().map(|(m, _)| m.as_slice()).collect();
        let stored = maildir.store(&messages);
        if let Err(e) = &stored {
            eprintln!("durable-sink: not stored: {e}");
        }
        for (_, done) in batch {
            let _ = done.send(stored.is_ok());
        }
    }
}

struct Maildir {
    dir: PathBuf,
    seq: u64,
}

impl Maildir {
    /// Writes each message into `tmp/`, one `syncfs` for them all, renames into `new/`, one
    /// fsync of `new/`: the batch is durable and visible when this returns `Ok`.
    fn store(&mut self, messages: &[&[u8]]) -> std::io::Result<()> {
        let (tmp_dir, new_dir) = (self.dir.join("tmp"), self.dir.join("new"));
        let mut names = Vec::with_capacity(messages.len());
        for message in messages {
            self.seq += 1;
            let name = format!("{}.Q{}.S={}.durable-sink", std::process::id(), self.seq, message.len());
            File::create(tmp_dir.join(&name))?.write_all(message)?;
            names.push(name);
        }
        let root = File::open(&self.dir)?;
        // SAFETY: a plain system call on a descriptor this function owns.
        if unsafe { syncfs(root.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for name in &names {
            std::fs::rename(tmp_dir.join(name), new_dir.join(name))?;
        }
        File::open(&new_dir)?.sync_all()
    }
}

/// One SMTP session; `store` is `None` when nothing is kept.
async fn serve(stream: TcpStream, store: Option<mpsc::Sender<Job>>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut out) = stream.into_split();
    let mut input = BufReader::new(read);
    out.write_all(b"220 durable-sink ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(512);
    let mut sender = String::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).map(|v| v.to_ascii_uppercase()).unwrap_or_default();
        let reply: &[u8] = match &verb[..] {
            b"EHLO" => b"250-durable-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            b"HELO" => b"250 durable-sink\r\n",
            b"MAIL" => {
                let text = String::from_utf8_lossy(&line);
                sender = text.split_once('<').and_then(|(_, r)| r.split_once('>')).map_or("", |(a, _)| a).into();
                b"250 2.1.0 Ok\r\n"
            }
            b"DATA" => {
                out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut message = format!("Return-Path: <{sender}>\r\n").into_bytes();
                message.reserve(8192);
                loop {
                    let start = message.len();
                    if input.read_until(b'\n', &mut message).await? == 0 {
                        return Ok(());
                    }
                    if &message[start..] == b".\r\n" {
                        message.truncate(start);
                        break;
                    }
                }
                let stored = match &store {
                    None => true,
                    Some(store) => {
                        let (done, answer) = oneshot::channel();
                        store.send((message, done)).is_ok() && answer.await.unwrap_or(false)
                    }
                };
                if stored {
                    b"250 2.0.0 Ok: queued\r\n"
                } else {
                    b"451 4.3.0 Not stored\r\n"
                }
            }
            b"QUIT" => {
                out.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"250 2.0.0 Ok\r\n",
        };
        out.write_all(reply).await?;
    }
}
