//! Where COM1's output goes, from the `serial` configuration: stdout, or
//! Firecracker's `serial_out_path` file, or sie's console socket, or both
//! of the last two.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;

use sie_config::SerialConfig;

use super::socket::{ConsoleSocket, ConsoleSocketError};

/// Why the console's sinks could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleSinkError {
    /// `serial_out_path` could not be opened.
    #[error("serial_out_path {path}")]
    OutFile {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The console socket could not be bound.
    #[error(transparent)]
    Socket(#[from] ConsoleSocketError),
}

/// Writes every byte to each sink; one failing does not starve the others.
struct Tee(Vec<Box<dyn Write + Send>>);

impl Write for Tee {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut failed = None;
        for sink in &mut self.0 {
            if let Err(error) = sink.write_all(bytes) {
                failed = Some(error);
            }
        }
        failed.map_or(Ok(bytes.len()), Err)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut failed = Ok(());
        for sink in &mut self.0 {
            if let Err(error) = sink.flush() {
                failed = Err(error);
            }
        }
        failed
    }
}

/// COM1's host side as `serial` asks for it.
pub struct ConsoleSinks {
    /// Where output goes (`None` when `serial` names neither a file nor a
    /// socket: the caller keeps stdout).
    pub output: Option<Box<dyn Write + Send>>,
    /// The console socket, to be served on the event loop.
    pub socket: Option<ConsoleSocket>,
}

/// Opens the output file and binds the console socket `serial` names.
pub fn open(serial: &SerialConfig) -> Result<ConsoleSinks, ConsoleSinkError> {
    let mut sinks: Vec<Box<dyn Write + Send>> = Vec::new();
    if let Some(path) = &serial.serial_out_path {
        // As Firecracker opens it: created if missing, never truncated, and
        // non-blocking so a FIFO nobody reads drops output instead of
        // stalling the vCPU that writes it.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| ConsoleSinkError::OutFile {
                path: path.display().to_string(),
                source,
            })?;
        sinks.push(Box::new(file));
    }
    let socket = match &serial.console_socket {
        Some(path) => {
            let socket = ConsoleSocket::bind(path, serial.ring_bytes())?;
            sinks.push(Box::new(socket.output()));
            Some(socket)
        }
        None => None,
    };
    let output: Option<Box<dyn Write + Send>> = match sinks.len() {
        0 => None,
        1 => sinks.pop(),
        _ => Some(Box::new(Tee(sinks))),
    };
    Ok(ConsoleSinks { output, socket })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_file_is_appended_to_and_both_sinks_get_every_byte() {
        let dir = std::env::temp_dir().join(format!("sie-sinks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("serial.log");
        std::fs::write(&file, b"kept|").unwrap();
        let serial = SerialConfig {
            serial_out_path: Some(file.clone()),
            console_socket: Some(dir.join("console.sock")),
            ..SerialConfig::default()
        };
        let ConsoleSinks { output, socket } = open(&serial).unwrap();
        let mut output = output.unwrap();
        output.write_all(b"guest says hi\n").unwrap();
        // Never truncated: Firecracker's clients may point it at a log.
        assert!(
            std::fs::read(&file)
                .unwrap()
                .starts_with(b"guest says hi\n")
        );
        let socket = socket.unwrap();
        let mut ring = socket.output();
        assert_eq!(ring.dropped(), 0);
        ring.flush().unwrap();
        drop(socket);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_configured_keeps_stdout() {
        let ConsoleSinks { output, socket } = open(&SerialConfig::default()).unwrap();
        assert!(output.is_none() && socket.is_none());
    }
}
