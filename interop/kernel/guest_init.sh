#!/bin/busybox sh
# /init of the nvblk kernel-interop guest: mount the pseudo filesystems, load
# the nvdimm modules, run the host's job (/job.sh), power off. See
# guest_lib.sh for the helpers and the output protocol.
export PATH=/bin
# guestio's NBD_DO_IT waits interruptibly in the kernel, and a signal that
# interrupts it shuts the device's sockets down (nbd_start_device_ioctl):
# the Go runtime's preemption signal (SIGURG) reaching the thread blocked
# there can kill the device. No async preemption for the guest's Go tools.
export GODEBUG=asyncpreemptoff=1
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
. /etc/nvblk/lib.sh

echo "@@NVBLK-BEGIN $(uname -r) cpus=$(nproc)"
echo "@@L - kernel $(uname -r) $(uname -v)"
# Modules in dependency order (the host resolved modules.dep).
nv_modules /etc/nvblk/modules

nv_phase modules loaded
if [ -r /job.sh ]; then
	. /job.sh
else
	nv_e - "no /job.sh in the initramfs"
fi

nv_phase job done
nv_dmesg
echo "@@NVBLK-END"
sync
poweroff -f
