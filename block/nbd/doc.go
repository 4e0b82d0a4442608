// Package nbd speaks the Network Block Device protocol (NetworkBlockDevice/nbd
// doc/proto.md) in both directions:
//
//   - Dial opens a remote export as a block.Backend (with Discarder,
//     ZeroWriter, ReadOnlyReporter and vectored I/O), so a guest disk can
//     live on qemu-nbd, nbd-server, nbdkit or another vio.
//   - Server exports any number of named block.Backends to any number of
//     clients, over TCP or unix sockets, so that qemu-img, qemu-io, fio,
//     the Linux nbd driver or a migration target can reach a vio disk.
//
// Both sides use fixed-newstyle negotiation with NBD_OPT_GO (the client
// falls back to NBD_OPT_EXPORT_NAME for servers without it), structured
// replies when the peer agrees, and many requests in flight on one
// connection. Both sides speak TLS (NBD_OPT_STARTTLS with X.509
// certificates from a directory laid out as QEMU's tls-creds-x509; see
// ServerTLSConfig and ClientTLSConfig): a server with a TLSConfig requires
// it of every client, a client with one requires it of the server.
// NBD_CMD_BLOCK_STATUS and the extended-headers extension are not
// implemented: the server offers no metadata context.
//
// # What each side trusts
//
// Neither side trusts the other. The server checks every request against
// the export (bounds, alignment, flags, read-only) before touching the
// back-end, never buffers more than the advertised maximum payload (32 MiB)
// per request nor more than Server.MaxBufferedBytes per connection, and
// bounds option data during the handshake. The client checks every reply
// chunk's offset and length against the request it answers before storing
// a byte, writes payload only into the caller's buffer, bounds error
// messages and option replies, and treats any inconsistency as a dropped
// connection.
//
// # Reconnects
//
// The client survives a dropped connection, a stalled server and a server
// restart: unanswered requests are re-sent on a new connection, and writes
// the old server acknowledged but no flush covered are replayed first, so
// that Flush keeps its meaning. Client's documentation states exactly what
// is guaranteed.
package nbd
