//! The guest's console on the host: COM1's output to stdout (or a file, or
//! a console socket a client attaches to), stdin (or that client) to COM1,
//! and the terminal in raw mode while the guest owns it.

pub mod flush;
pub mod input;
pub mod output;
pub mod ring;
pub mod sinks;
pub mod socket;
pub mod terminal;

pub use flush::ConsoleFlush;
pub use input::ConsoleInput;
pub use output::ConsoleOutput;
pub use socket::{ConsoleSocket, ConsoleSocketError, ConsoleSocketOutput};
pub use terminal::TerminalGuard;
