//! One client connection: nonblocking reads in, responses out.
//!
//! Input is read only while there is room for one more whole request and
//! output is produced only while the unsent backlog is small, so a client
//! that pipelines without reading its answers cannot make the server hold
//! more than about one request and a few responses for it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use sie_config::Response;
use vmm_sys_util::epoll::EventSet;

use crate::dispatch::Dispatcher;
use crate::http::{Event, RequestReader};
use crate::response::{CONTINUE, write_response};

/// Stop producing responses while this much output is unsent.
const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 4096;

/// One accepted client.
pub(crate) struct Connection {
    stream: UnixStream,
    reader: RequestReader,
    output: Vec<u8>,
    /// No more requests will be answered: close once `output` is sent.
    closing: bool,
    /// The client has shut its sending side.
    input_done: bool,
    /// What the connection is registered for in epoll.
    pub(crate) interest: EventSet,
    /// When the client last made the server do anything.
    pub(crate) last_active: Instant,
}

impl Connection {
    /// Wraps an accepted stream; it must already be nonblocking.
    pub(crate) fn new(stream: UnixStream, max_payload: usize) -> Self {
        Self {
            stream,
            reader: RequestReader::new(max_payload),
            output: Vec::new(),
            closing: false,
            input_done: false,
            interest: EventSet::IN,
            last_active: Instant::now(),
        }
    }

    /// The socket, for epoll registration.
    pub(crate) fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Handles readiness. `Ok(false)` or an error means: drop the
    /// connection (errors are a client gone mid-request or mid-response).
    pub(crate) fn on_ready(
        &mut self,
        events: EventSet,
        dispatcher: &Dispatcher,
    ) -> io::Result<bool> {
        self.last_active = Instant::now();
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            self.read_available()?;
        }
        loop {
            let answered = self.answer_ready(dispatcher);
            self.flush()?;
            if !answered || !self.output.is_empty() {
                break;
            }
        }
        Ok(!(self.closing && self.output.is_empty()))
    }

    /// What to wait for next.
    pub(crate) fn wanted(&self) -> EventSet {
        let mut wanted = EventSet::empty();
        if self.wants_input() {
            wanted |= EventSet::IN;
        }
        if !self.output.is_empty() {
            wanted |= EventSet::OUT;
        }
        wanted
    }

    fn wants_input(&self) -> bool {
        !self.closing && !self.input_done && self.reader.buffered() < self.reader.capacity()
    }

    fn read_available(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; READ_CHUNK];
        while self.wants_input() {
            match self.stream.read(&mut chunk) {
                Ok(0) => self.input_done = true,
                Ok(read) => self.reader.push(&chunk[..read]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Answers buffered requests while output has room. True if it
    /// answered at least one.
    fn answer_ready(&mut self, dispatcher: &Dispatcher) -> bool {
        let mut answered = false;
        while !self.closing && self.output.len() < OUTPUT_HIGH_WATER {
            match self.reader.next_event() {
                Ok(None) => {
                    // A request the client will never finish is dropped.
                    if self.input_done {
                        self.closing = true;
                    }
                    break;
                }
                Ok(Some(Event::Continue)) => self.output.extend_from_slice(CONTINUE),
                Ok(Some(Event::Request(request))) => {
                    let response = dispatcher.answer(&request);
                    write_response(&mut self.output, &response, request.keep_alive);
                    self.closing = !request.keep_alive;
                    answered = true;
                }
                Err(error) => {
                    dispatcher.count_invalid();
                    tracing::info!("api: bad HTTP from a client: {error}");
                    write_response(&mut self.output, &Response::fault(&error), false);
                    self.closing = true;
                }
            }
        }
        answered
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut sent = 0;
        let result = loop {
            if sent == self.output.len() {
                break Ok(());
            }
            match self.stream.write(&self.output[sent..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => sent += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break Err(error),
            }
        };
        self.output.drain(..sent);
        result
    }
}
