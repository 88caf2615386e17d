//! An SQL store that fences its writes: each row keeps the fencing token of the last write
//! that changed it, and a write is applied only if its token is not older. The token lives
//! in the same row as the data, so it is as durable as the data and compared in the same
//! atomic statement: no holder that lost its lock (paused past its TTL, then woke up) can
//! overwrite what a newer holder wrote, even across restarts of this service.
//!
//! (Also compiled into tests/conformance.rs, which runs a paused holder against it on
//! every backend.)

use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

/// What became of a fenced write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Applied: the row now carries this write's token.
    Applied,
    /// Refused: the row carries a newer token (`newer`): a later holder wrote already.
    Refused { newer: u64 },
}

/// Accounts in SQLite: `id`, `balance`, and `token`, the fencing token of the last write.
pub struct Accounts {
    db: Mutex<Connection>,
}

impl Accounts {
    /// The accounts table in `db` (created if missing).
    pub fn new(db: Connection) -> rusqlite::Result<Self> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS accounts (
                 id      TEXT PRIMARY KEY,
                 balance INTEGER NOT NULL,
                 token   INTEGER NOT NULL DEFAULT 0
             )",
        )?;
        Ok(Accounts { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens account `id` with `balance`, written by nobody yet (token 0).
    pub fn open(&self, id: &str, balance: i64) -> rusqlite::Result<()> {
        self.db().execute(
            "INSERT INTO accounts (id, balance, token) VALUES (?1, ?2, 0)",
            params![id, balance],
        )?;
        Ok(())
    }

    /// Sets the balance of account `id`, as the holder with fencing token `token`: applied
    /// only if no write with a greater token came first. One statement, so the comparison
    /// and the write are atomic.
    pub fn set_balance(&self, id: &str, balance: i64, token: u64) -> rusqlite::Result<Write> {
        // SQLite integers are signed 64-bit; fencing tokens (etcd revisions, ZooKeeper
        // zxids) are too.
        let token =
            i64::try_from(token).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        let db = self.db();
        let changed = db.execute(
            "UPDATE accounts SET balance = ?1, token = ?2 WHERE id = ?3 AND token <= ?2",
            params![balance, token, id],
        )?;
        if changed == 1 {
            return Ok(Write::Applied);
        }
        // Nothing changed: the account is missing, or a newer holder wrote it (this read
        // only explains the refusal; the UPDATE decided).
        let newer: Option<i64> = db
            .query_row("SELECT token FROM accounts WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()?;
        match newer {
            Some(newer) => Ok(Write::Refused {
                newer: newer as u64,
            }),
            None => Err(rusqlite::Error::QueryReturnedNoRows),
        }
    }

    /// The balance of account `id` and the token of the write that set it.
    pub fn balance(&self, id: &str) -> rusqlite::Result<(i64, u64)> {
        self.db().query_row(
            "SELECT balance, token FROM accounts WHERE id = ?1",
            [id],
            |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)),
        )
    }
}
