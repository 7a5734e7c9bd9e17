//! Consumer services, which have no listener: examples/python/consumer.py
//! reads the Redis stream "jobs" in the group "workers" of a real
//! `redis-server` while a producer adds messages at a steady rate, and is
//! restarted 20 times in a row. Every message is done exactly once (its
//! record in the stream "done" and its acknowledgement are one transaction),
//! none is left pending, every generation leaves the group as it exits, and a
//! restart onto a successor that fails before ready leaves the old generation
//! consuming.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use testkit::{Consumer, Redis, Resp, TempDir, Value};

const RESTARTS: usize = 20;
const RESTART_EVERY: Duration = Duration::from_millis(500);

#[test]
fn every_message_is_done_once_across_restarts() {
    every_message_once_across_restarts(300);
}

/// Faster than one message's work at a time can keep up with (0-4 ms each):
/// the example takes up to 50 at once and works on them side by side.
#[test]
fn every_message_is_done_once_across_restarts_when_taken_in_batches() {
    every_message_once_across_restarts(2_000);
}

fn every_message_once_across_restarts(rate: u64) {
    let redis = Redis::start();
    let mut consumer = Consumer::launch(example(&redis, None));
    let producer = Producer::start(&redis, rate);
    let mut next = Instant::now();
    for _ in 0..RESTARTS {
        next += RESTART_EVERY;
        thread::sleep(next.saturating_duration_since(Instant::now()));
        let status = consumer.restart();
        assert_eq!(status, 0, "a drained generation exits with 0 (wait status)");
    }
    let produced = producer.finish();
    let records = done_once_stopped(&redis, consumer, produced);

    let generations: BTreeSet<u64> = records.iter().map(|r| r.generation).collect();
    println!(
        "{produced} messages at {rate}/s, done by {} of {} generations",
        generations.len(),
        RESTARTS + 1
    );
    assert!(
        generations.len() >= 15,
        "only generations {generations:?} did work"
    );
}

#[test]
fn a_successor_that_fails_before_ready_leaves_the_old_one_consuming() {
    let redis = Redis::start();
    let dir = TempDir::new("consumer");
    let script = dir.join("consumer.py");
    std::fs::copy(testkit::repo().join("examples/python/consumer.py"), &script).unwrap();
    let consumer = Consumer::launch(example(&redis, Some(&script)));
    let first = consumer.pid;
    let producer = Producer::start(&redis, 300);

    // A broken release on disk: its process exits before it is ready.
    std::fs::write(
        &script,
        "raise SystemExit('consumer.py: a broken release')\n",
    )
    .unwrap();
    let line = consumer.failed_restart();
    assert!(line.contains("before it was ready"), "{line}");
    let failed_at = producer.sent();
    // Pacing, not synchronisation: let the producer add ~300 more messages.
    thread::sleep(Duration::from_secs(1));
    let produced = producer.finish();
    assert!(
        produced > failed_at,
        "messages were produced after the failed restart"
    );
    let records = done_once_stopped(&redis, consumer, produced);
    let others: Vec<&Record> = records.iter().filter(|r| r.pid != first).collect();
    assert!(
        others.is_empty(),
        "all done by pid {first}, not {:?}",
        &others[..others.len().min(5)]
    );
}

/// The consumer example on `redis`, from `script` (default: the one in
/// examples/python).
fn example(redis: &Redis, script: Option<&Path>) -> Command {
    let venv = testkit::python_venv();
    assert!(
        venv.exists(),
        "{} is missing: scripts/python-venv makes it, with redis-py",
        venv.display()
    );
    let mut command = match script {
        Some(script) => testkit::python_script(script),
        None => testkit::python_example("consumer.py"),
    };
    command.arg(redis.url());
    command
}

/// Adds messages to "jobs" at `rate` per second from a thread of its own:
/// fields `id` (0, 1, 2...) and `ms`, the work, 0 to 4 ms.
struct Producer {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Producer {
    fn start(redis: &Redis, rate: u64) -> Producer {
        let (sent, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut conn = redis.connect();
        let thread = thread::spawn({
            let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
            move || {
                let started = Instant::now();
                // Bounded even if the test never says stop.
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120)
                {
                    let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                    let from = sent.load(Ordering::Relaxed);
                    produce(&mut conn, from..due);
                    sent.store(due.max(from), Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(10)); // the pace
                }
            }
        });
        Producer {
            sent,
            stop,
            thread: Some(thread),
        }
    }

    /// How many messages were added (the ids below it).
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops it; how many messages were added in all.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        (self.thread.take().unwrap().join()).expect("the producer did not fail");
        self.sent()
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Adds the messages `ids`, pipelined.
fn produce(conn: &mut Resp, ids: std::ops::Range<u64>) {
    for id in ids.clone() {
        let ms = (id * 7 % 5).to_string();
        conn.send(&["XADD", "jobs", "*", "id", &id.to_string(), "ms", &ms]);
    }
    for _ in ids {
        assert!(matches!(conn.reply(), Value::Text(_)), "XADD answered");
    }
}

/// One message done, as the stream "done" says.
#[derive(Debug)]
struct Record {
    id: u64,
    pid: i32,
    generation: u64,
}

/// Waits until the messages `0..produced` are done, each exactly once, then
/// stops the consumer and checks it did nothing more and left nothing behind.
fn done_once_stopped(redis: &Redis, consumer: Consumer, produced: u64) -> Vec<Record> {
    let mut done = Done::new(redis);
    done.wait_for(produced);
    assert_eq!(
        consumer.stop(),
        0,
        "stopped with SIGTERM, it drains and exits 0"
    );
    done.read(None);
    assert_each_once(&done.records, produced);
    assert_nothing_left(redis);
    done.records
}

/// A reader of the stream "done", from its start.
struct Done {
    conn: Resp,
    /// The id of the last entry read.
    last: String,
    records: Vec<Record>,
}

impl Done {
    fn new(redis: &Redis) -> Done {
        Done {
            conn: redis.connect(),
            last: "0".into(),
            records: Vec::new(),
        }
    }

    /// Reads on until at least `count` records came, or none came for 10 s:
    /// the rest are lost, and the checks say which. Each blocking read
    /// returns as soon as a record does.
    fn wait_for(&mut self, count: u64) {
        while (self.records.len() as u64) < count && self.read(Some("10000")) {}
    }

    /// Reads what came since the last read, waiting up to `block` ms for
    /// something (None: not at all); whether anything came.
    fn read(&mut self, block: Option<&str>) -> bool {
        let mut command = vec!["XREAD", "COUNT", "10000"];
        command.extend(block.map(|ms| ["BLOCK", ms]).into_iter().flatten());
        let last = self.last.clone();
        command.extend(["STREAMS", "done", &last]);
        for stream in self.conn.command(&command).items() {
            for entry in stream.items()[1].items() {
                let [id, fields] = entry.items() else {
                    panic!("not a stream entry: {entry:?}");
                };
                self.last = id.text().into();
                let fields: Vec<&str> = fields.items().iter().map(Value::text).collect();
                let field = |name: &str| -> u64 {
                    let at = fields.iter().position(|f| *f == name);
                    let value = at.and_then(|at| fields.get(at + 1)?.parse().ok());
                    value.unwrap_or_else(|| panic!("no {name} in {fields:?}"))
                };
                self.records.push(Record {
                    id: field("id"),
                    pid: field("pid") as i32,
                    generation: field("generation"),
                });
            }
        }
        self.last != last
    }
}

fn assert_each_once(records: &[Record], produced: u64) {
    let mut times = vec![0u32; produced as usize];
    for record in records {
        match times.get_mut(record.id as usize) {
            Some(done) => *done += 1,
            None => panic!("never sent: {record:?}"),
        }
    }
    let never: Vec<usize> = (0..times.len()).filter(|&id| times[id] == 0).collect();
    let twice: Vec<usize> = (0..times.len()).filter(|&id| times[id] > 1).collect();
    assert!(
        never.is_empty() && twice.is_empty(),
        "of {produced} messages, {} never done (first {:?}), {} done more than once (first {:?})",
        never.len(),
        &never[..never.len().min(10)],
        twice.len(),
        &twice[..twice.len().min(10)]
    );
}

/// No message pending in the group (taken and never acknowledged), and no
/// consumer left in it: each generation left it once it had drained.
fn assert_nothing_left(redis: &Redis) {
    let mut conn = redis.connect();
    let pending = conn.command(&["XPENDING", "jobs", "workers"]);
    assert_eq!(pending.items()[0].int(), 0, "pending: {pending:?}");
    let consumers = conn.command(&["XINFO", "CONSUMERS", "jobs", "workers"]);
    assert!(
        consumers.items().is_empty(),
        "left in the group: {consumers:?}"
    );
}
