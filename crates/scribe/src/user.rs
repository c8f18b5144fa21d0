//! `scribe user`: manage a users file (`scribe node --users FILE`).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use scribe_node::auth::{make_token, now_unix, Role, UserStore};

/// Arguments of `scribe user`.
#[derive(clap::Args, Debug)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(clap::Subcommand, Debug)]
enum UserCommand {
    /// Add a user, or replace the entry of the same name (creates the file if missing).
    Add {
        /// The user's name.
        name: String,
        /// Its role: read (queries), write (queries and writes), admin (everything).
        #[arg(long)]
        role: Role,
        /// The users file.
        #[arg(long, env = "SCRIBE_USERS")]
        users: PathBuf,
        /// Read the password from the first line of standard input [default: prompted without echo]
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Remove {
        /// The user's name.
        name: String,
        /// The users file.
        #[arg(long, env = "SCRIBE_USERS")]
        users: PathBuf,
    },
    /// List the users and their roles.
    List {
        /// The users file.
        #[arg(long, env = "SCRIBE_USERS")]
        users: PathBuf,
    },
    /// Print a bearer token for a user (HMAC-signed name and expiry).
    Token {
        /// The user's name.
        name: String,
        /// The users file.
        #[arg(long, env = "SCRIBE_USERS")]
        users: PathBuf,
        /// How long the token is valid [default: 30days]
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30days")]
        valid_for: Duration,
    },
}

/// Reads a password: stdin's first line, or a no-echo prompt on a terminal.
pub fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !from_stdin && stdin.is_terminal() {
        eprint!("password: ");
        let echo_off = set_echo(false);
        let mut line = String::new();
        let r = stdin.lock().read_line(&mut line);
        if echo_off {
            set_echo(true);
            eprintln!();
        }
        r.context("reading the password")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn set_echo(on: bool) -> bool {
    // SAFETY: termios calls on our own standard input with a zeroed, then filled, struct.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return false;
        }
        if on {
            t.c_lflag |= libc::ECHO;
        } else {
            t.c_lflag &= !libc::ECHO;
        }
        libc::tcsetattr(0, libc::TCSANOW, &t) == 0
    }
}

/// Runs `scribe user`.
pub fn run(args: UserArgs) -> anyhow::Result<i32> {
    match args.command {
        UserCommand::Add {
            name,
            role,
            users,
            password_stdin,
        } => {
            scribe_node::auth::users::check_user_name(&name)
                .map_err(|e| anyhow!("user name {name:?}: {e}"))?;
            let mut store = UserStore::load_or_empty(&users)?;
            let password = read_password(password_stdin)?;
            if password.is_empty() {
                return Err(anyhow!("the password must not be empty"));
            }
            store.set(&name, role, &password);
            store.save(&users)?;
            eprintln!(
                "user {name} ({}) saved in {}",
                role.as_str(),
                users.display()
            );
        }
        UserCommand::Remove { name, users } => {
            let mut store = UserStore::load(&users)?;
            if !store.remove(&name) {
                return Err(anyhow!("no user {name:?} in {}", users.display()));
            }
            store.save(&users)?;
        }
        UserCommand::List { users } => {
            let store = UserStore::load(&users)?;
            for u in store.users() {
                println!("{}\t{}", u.name, u.role.as_str());
            }
        }
        UserCommand::Token {
            name,
            users,
            valid_for,
        } => {
            let store = UserStore::load(&users)?;
            if store.get(&name).is_none() {
                return Err(anyhow!("no user {name:?} in {}", users.display()));
            }
            println!(
                "{}",
                make_token(&store.token_key, &name, now_unix() + valid_for.as_secs())
            );
        }
    }
    Ok(0)
}
