//! The guest's console on the host: COM1's output to stdout, stdin to COM1,
//! and the terminal in raw mode while the guest owns it.

pub mod input;
pub mod output;
pub mod terminal;

pub use input::ConsoleInput;
pub use output::ConsoleOutput;
pub use terminal::TerminalGuard;
