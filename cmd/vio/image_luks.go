package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/viovmm/vio/block/crypt"
	"github.com/viovmm/vio/block/image"
)

// LUKS2 encryption in `vio image`: `create --encrypt` and the `luks` verbs
// (dump, add-key, remove-key). Passphrases come from a file, a descriptor
// or the environment, never from the command line itself.

func init() { imageSubcommands = append(imageSubcommands, imageLuksCommand) }

// keyFlags adds --PREFIXkey-file, --PREFIXkey-fd and --PREFIXkey-env.
func keyFlags(c *cobra.Command, prefix, what string) {
	c.Flags().String(prefix+"key-file", "", "read the "+what+" from this file (all of it, byte for byte, as cryptsetup --key-file)")
	c.Flags().Int(prefix+"key-fd", -1, "read the "+what+" from this open file descriptor")
	c.Flags().String(prefix+"key-env", "", "take the "+what+" from this environment variable")
}

// readKey reads the passphrase the --PREFIXkey-* flags name.
func readKey(cmd *cobra.Command, prefix string) ([]byte, error) {
	var s crypt.KeySource
	s.File, _ = cmd.Flags().GetString(prefix + "key-file")
	s.Env, _ = cmd.Flags().GetString(prefix + "key-env")
	if fd, _ := cmd.Flags().GetInt(prefix + "key-fd"); cmd.Flags().Changed(prefix + "key-fd") {
		s.FD = &fd
	}
	if err := s.Check(); err != nil {
		return nil, fmt.Errorf("--%skey-file, --%skey-fd or --%skey-env: %w", prefix, prefix, prefix, err)
	}
	return s.Read()
}

// kdfFlags adds the flags choosing a new keyslot's KDF, named as
// cryptsetup names them.
func kdfFlags(c *cobra.Command) {
	c.Flags().String("pbkdf", crypt.Argon2id, "key derivation for the new keyslot: argon2id or pbkdf2")
	c.Flags().Uint32("pbkdf-force-iterations", 0, fmt.Sprintf("pbkdf2 iterations (default %d) or argon2id passes (default %d)", crypt.DefaultIterations, crypt.DefaultArgonTime))
	c.Flags().Uint32("pbkdf-memory", 0, fmt.Sprintf("argon2id memory in KiB (default %d)", crypt.DefaultArgonMemory))
	c.Flags().Uint32("pbkdf-parallel", 0, "argon2id threads (default: the CPUs, at most 4)")
}

func kdfParams(cmd *cobra.Command) crypt.KDFParams {
	var p crypt.KDFParams
	p.Type, _ = cmd.Flags().GetString("pbkdf")
	iter, _ := cmd.Flags().GetUint32("pbkdf-force-iterations")
	p.Memory, _ = cmd.Flags().GetUint32("pbkdf-memory")
	p.CPUs, _ = cmd.Flags().GetUint32("pbkdf-parallel")
	if p.Type == crypt.PBKDF2 {
		p.Iterations = iter
	} else {
		p.Time = iter
	}
	return p
}

// addEncryptFlags gives `vio image create` its --encrypt flags.
func addEncryptFlags(c *cobra.Command) {
	c.Flags().Bool("encrypt", false, "make a LUKS2 encrypted image (aes-xts-plain64) that cryptsetup opens too; SIZE is the size of the decrypted disk, the header adds 16 MiB")
	c.Flags().Int("sector-size", 4096, "with --encrypt: the encryption sector size, 512 or 4096")
	keyFlags(c, "", "passphrase")
	kdfFlags(c)
}

// encryptRequested reports whether `vio image create` was asked to encrypt.
func encryptRequested(cmd *cobra.Command) bool {
	on, _ := cmd.Flags().GetBool("encrypt")
	return on
}

// createEncrypted creates the image o describes with room for a LUKS2
// header, and formats it. A failure leaves no file behind.
func createEncrypted(cmd *cobra.Command, path string, o image.CreateOptions) error {
	if o.BackingFile != "" {
		return errors.New("--encrypt cannot be combined with a backing file: encrypt the whole disk (vio image convert it into an encrypted image's graph)")
	}
	ss, _ := cmd.Flags().GetInt("sector-size")
	if ss != 512 && ss != 4096 {
		return fmt.Errorf("--sector-size %d: use 512 or 4096", ss)
	}
	if o.Size%int64(ss) != 0 {
		return fmt.Errorf("size %d is not a whole number of %d-byte sectors", o.Size, ss)
	}
	pass, err := readKey(cmd, "")
	if err != nil {
		return err
	}
	defer clear(pass)
	o.Size += crypt.FormatDataOffset
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("%s exists: vio image create --encrypt does not overwrite images", path)
	}
	if err := image.Create(path, o); err != nil {
		return err
	}
	fail := func(err error) error {
		os.Remove(path)
		return err
	}
	be, err := image.Open(path, image.OpenOptions{Format: o.Format, Lock: true})
	if err != nil {
		return fail(err)
	}
	err = crypt.Format(be, pass, crypt.FormatOptions{SectorSize: ss, KDF: kdfParams(cmd)})
	if cerr := be.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	return nil
}

func imageLuksCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "luks",
		Short: "Inspect an encrypted (LUKS2) image and manage its passphrases",
	}
	c.PersistentFlags().StringP("format", "f", image.Raw, "format of the image holding the LUKS2 volume: raw or qcow2")
	c.AddCommand(luksDumpCommand(), luksAddKeyCommand(), luksRemoveKeyCommand())
	return c
}

// openLuks opens an image's LUKS2 volume for a luks verb.
func openLuks(cmd *cobra.Command, path string, readOnly bool) (*crypt.Volume, func() error, error) {
	format, _ := cmd.Flags().GetString("format")
	if err := image.CheckFormat(format); err != nil {
		return nil, nil, err
	}
	be, err := image.Open(path, image.OpenOptions{Format: format, ReadOnly: readOnly, Lock: true})
	if err != nil {
		return nil, nil, err
	}
	v, err := crypt.ReadVolume(be)
	if err != nil {
		be.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return v, be.Close, nil
}

func luksDumpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "dump FILE",
		Short: "Print the LUKS2 header: layout, cipher, sector size and keyslots (no key material)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, done, err := openLuks(cmd, args[0], true)
			if err != nil {
				return err
			}
			defer done()
			v.Dump(cmd.OutOrStdout())
			return nil
		},
	}
}

func luksAddKeyCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "add-key FILE --key-file OLD --new-key-file NEW",
		Short: "Add a passphrase: an existing one (--key-*) opens the image, the new one (--new-key-*) gets a keyslot",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			old, err := readKey(cmd, "")
			if err != nil {
				return err
			}
			defer clear(old)
			neu, err := readKey(cmd, "new-")
			if err != nil {
				return err
			}
			defer clear(neu)
			v, done, err := openLuks(cmd, args[0], false)
			if err != nil {
				return err
			}
			slot, err := v.AddKey(old, neu, kdfParams(cmd))
			if cerr := done(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added keyslot %d\n", slot)
			return nil
		},
	}
	keyFlags(c, "", "existing passphrase")
	keyFlags(c, "new-", "new passphrase")
	kdfFlags(c)
	return c
}

func luksRemoveKeyCommand() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "remove-key FILE --key-file KEY",
		Short: "Remove the keyslot the given passphrase opens, and overwrite its key material",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pass, err := readKey(cmd, "")
			if err != nil {
				return err
			}
			defer clear(pass)
			v, done, err := openLuks(cmd, args[0], false)
			if err != nil {
				return err
			}
			slot, err := v.RemoveKey(pass, force)
			if cerr := done(); err == nil {
				err = cerr
			}
			if err != nil {
				if !force && len(v.Metadata().Keyslots) == 1 {
					return fmt.Errorf("%w (--force removes it)", err)
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed keyslot %d\n", slot)
			return nil
		},
	}
	keyFlags(c, "", "passphrase to remove")
	c.Flags().BoolVar(&force, "force", false, "remove the last keyslot too (the data becomes unreadable for ever)")
	return c
}
