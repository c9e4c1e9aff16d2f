package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/block"
)

func newReadCommand() *cobra.Command {
	var lba, count uint64
	cmd := &cobra.Command{
		Use:   "read [--lba N] [--count M] PATH",
		Short: "Write sectors to stdout (default: from --lba to the end of the device)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withBlock(cmd, args[0], true, func(bd block.Device) error {
				n := bd.Sectors()
				if lba > n {
					return fmt.Errorf("--lba %d is past the end of the device (%d sectors)", lba, n)
				}
				if !cmd.Flags().Changed("count") {
					count = n - lba
				}
				ss := uint64(bd.SectorSize())
				buf := make([]byte, 256*ss)
				out := bufio.NewWriterSize(cmd.OutOrStdout(), 1<<20)
				for done := uint64(0); done < count; {
					c := min(count-done, 256)
					p := buf[:c*ss]
					if err := bd.ReadSectors(p, lba+done); err != nil {
						return err
					}
					if _, err := out.Write(p); err != nil {
						return err
					}
					done += c
				}
				return out.Flush()
			})
		},
	}
	cmd.Flags().Uint64Var(&lba, "lba", 0, "first sector")
	cmd.Flags().Uint64Var(&count, "count", 0, "number of sectors (default: to the end)")
	addPartitionFlag(cmd)
	addForceShareFlag(cmd)
	addForceRawFlag(cmd)
	return cmd
}

func newWriteCommand() *cobra.Command {
	var lba uint64
	cmd := &cobra.Command{
		Use:   "write [--lba N] PATH",
		Short: "Write whole sectors from stdin starting at --lba; each sector is atomic and durable",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withBlock(cmd, args[0], false, func(bd block.Device) error {
				ss := bd.SectorSize()
				buf := make([]byte, 256*ss)
				in := cmd.InOrStdin()
				written := uint64(0)
				for {
					n, rerr := io.ReadFull(in, buf)
					if n%ss != 0 {
						if werr := writeChunk(bd.WriteSectors, buf[:n-n%ss], lba+written, ss); werr != nil {
							return werr
						}
						written += uint64(n / ss)
						return fmt.Errorf("stdin ended with %d bytes that are not a whole %d-byte sector (%d sectors written from LBA %d)",
							n%ss, ss, written, lba)
					}
					if n > 0 {
						if err := writeChunk(bd.WriteSectors, buf[:n], lba+written, ss); err != nil {
							return err
						}
						written += uint64(n / ss)
					}
					if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
						break
					}
					if rerr != nil {
						return rerr
					}
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%d sectors written at LBA %d\n", written, lba)
				return nil
			})
		},
	}
	cmd.Flags().Uint64Var(&lba, "lba", 0, "first sector")
	addPartitionFlag(cmd)
	addForceRawFlag(cmd)
	return cmd
}

func writeChunk(write func([]byte, uint64) error, p []byte, lba uint64, ss int) error {
	if len(p) == 0 {
		return nil
	}
	return write(p, lba)
}

func newZeroCommand() *cobra.Command {
	var lba, count uint64
	cmd := &cobra.Command{
		Use:   "zero --lba N [--count M] PATH",
		Short: "Make sectors read as zeros (the BTT zero state)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withBlock(cmd, args[0], false, func(bd block.Device) error {
				return bd.ZeroSectors(lba, count)
			})
		},
	}
	cmd.Flags().Uint64Var(&lba, "lba", 0, "first sector")
	cmd.Flags().Uint64Var(&count, "count", 1, "number of sectors")
	_ = cmd.MarkFlagRequired("lba")
	addPartitionFlag(cmd)
	addForceRawFlag(cmd)
	return cmd
}
