//! The store's Lua scripts and how they are sent: `EVALSHA`, and `EVAL` with the script's text
//! when the server answers `NOSCRIPT`.
//!
//! redis-rs' own `ScriptInvocation` answers `NOSCRIPT` with `SCRIPT LOAD` and a second
//! `EVALSHA`. A `SCRIPT FLUSH` (or a failover to a node that never saw the script) between
//! those two commands makes the second one fail as well, and a claim or a finish then fails
//! although the server is up. `EVAL` carries the script itself, so it cannot miss, costs one
//! round trip instead of two and caches the script for the next `EVALSHA`: this module exists
//! for that semantic difference.

use std::sync::atomic::{AtomicBool, Ordering};

use redis::{Arg, Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind, ToRedisArgs, Value};

/// A Lua script: its text and its SHA-1, computed once.
pub(crate) struct Lua {
    code: &'static str,
    hash: String,
    /// Whether a [`Call::query_then`] of this script succeeded in this process, so the server
    /// most likely has it cached.
    sent: AtomicBool,
}

impl Lua {
    pub(crate) fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
            sent: AtomicBool::new(false),
        }
    }

    /// A call of this script on the single Redis key `key`; arguments follow with
    /// [`Call::arg`].
    pub(crate) fn call(&'static self, key: String) -> Call {
        let mut command = redis::cmd("EVALSHA");
        command.arg(&self.hash).arg(1).arg(key);
        Call { lua: self, command }
    }
}

/// One call of a [`Lua`] script: the `EVALSHA` command, ready to send.
pub(crate) struct Call {
    lua: &'static Lua,
    command: Cmd,
}

impl Call {
    /// Adds an argument (`ARGV[i]` in the script).
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.command.arg(arg);
        self
    }

    /// Sends the call: `EVALSHA`, then `EVAL` with the same keys and arguments if the server
    /// does not know the script.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
    ) -> Result<T, RedisError> {
        match self.command.query_async(connection).await {
            Err(error) if is_no_script(&error) => self.eval().query_async(connection).await,
            answer => answer,
        }
    }

    /// Sends the call with `then` pipelined behind it, in the same round trip, and answers
    /// the call's reply; `then`'s reply, or its error, is dropped.
    ///
    /// `then` runs whatever the script does, so a `NOSCRIPT` answer would run it once for
    /// nothing and once more with the `EVAL` sent again. The first call of a script in this
    /// process is therefore sent with `EVAL` (the script's text, which also caches it):
    /// `then` runs twice only when the server lost its script cache later (a `SCRIPT
    /// FLUSH`, a restart, a failover to a node that never saw the script).
    pub(crate) async fn query_then<T: FromRedisValue>(
        self,
        connection: &mut impl redis::aio::ConnectionLike,
        then: Cmd,
    ) -> Result<T, RedisError> {
        let lua = self.lua;
        let command = if lua.sent.load(Ordering::Relaxed) {
            self.command
        } else {
            self.eval()
        };
        // The call moves into the pipeline (its arguments may hold a large result): no copy.
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        pipeline.add_command(command);
        pipeline.add_command(then).ignore();
        let answer = match first(&pipeline, connection).await {
            Err(error) if is_no_script(&error) => {
                let mut commands = pipeline.cmd_iter();
                let mut again = redis::pipe();
                again.ignore_errors();
                if let Some(call) = commands.next() {
                    again.add_command(lua.eval(call));
                }
                for then in commands {
                    again.add_command(then.clone()).ignore();
                }
                first(&again, connection).await
            }
            answer => answer,
        };
        if answer.is_ok() {
            lua.sent.store(true, Ordering::Relaxed);
        }
        answer
    }

    /// The `EVAL` form of the call: the script's text in place of its hash.
    fn eval(&self) -> Cmd {
        self.lua.eval(&self.command)
    }
}

impl Lua {
    /// The `EVAL` form of `evalsha`, a call of this script: its text in place of its hash.
    fn eval(&self, evalsha: &Cmd) -> Cmd {
        let mut command = redis::cmd("EVAL");
        command.arg(self.code);
        // The EVALSHA command's arguments after its name and the hash: the key count, the
        // key, then ARGV.
        for arg in evalsha.args_iter().skip(2) {
            if let Arg::Simple(bytes) = arg {
                command.arg(bytes);
            }
        }
        command
    }
}

/// The first reply of `pipeline` (sent with `ignore_errors`, its other commands ignored).
async fn first<T: FromRedisValue>(
    pipeline: &redis::Pipeline,
    connection: &mut impl redis::aio::ConnectionLike,
) -> Result<T, RedisError> {
    let replies: Vec<Value> = pipeline.query_async(connection).await?;
    match replies.into_iter().next() {
        Some(Value::ServerError(error)) => Err(error.into()),
        Some(reply) => T::from_redis_value(reply).map_err(RedisError::from),
        None => Err(RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "a pipeline answered nothing",
        ))),
    }
}

fn is_no_script(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

#[cfg(test)]
mod tests {
    use super::*;

    static ECHO: std::sync::LazyLock<Lua> =
        std::sync::LazyLock::new(|| Lua::new("return {KEYS[1], ARGV[1], ARGV[2]}"));

    fn words(command: &Cmd) -> Vec<Vec<u8>> {
        command
            .args_iter()
            .map(|arg| match arg {
                Arg::Simple(bytes) => bytes.to_vec(),
                other => panic!("a call holds only plain arguments, not {other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_eval_form_carries_the_text_and_the_same_arguments() {
        let mut call = ECHO.call("k".to_owned());
        call.arg("a").arg(2);
        assert_eq!(
            words(&call.command),
            [
                b"EVALSHA".to_vec(),
                ECHO.hash.as_bytes().to_vec(),
                b"1".to_vec(),
                b"k".to_vec(),
                b"a".to_vec(),
                b"2".to_vec()
            ]
        );
        assert_eq!(
            words(&call.eval()),
            [
                b"EVAL".to_vec(),
                ECHO.code.as_bytes().to_vec(),
                b"1".to_vec(),
                b"k".to_vec(),
                b"a".to_vec(),
                b"2".to_vec()
            ]
        );
    }
}
