/* edutool: drives QEMU's edu device (1234:11e8) from userspace through sysfs,
 * for the rig's passthrough cases: in L2, where sie passed the device in, and
 * in L1 for comparison. Built static by build-images. Registers (QEMU's
 * docs/specs/edu.rst): 0x00 id, 0x08 factorial, 0x20 status (bit 0: busy),
 * 0x24 interrupt status, 0x60 raise, 0x64 acknowledge, 0x80 DMA source,
 * 0x88 DMA destination, 0x90 DMA count, 0x98 DMA command (1 start, 2 edu to
 * RAM); the device's own 4 KiB DMA buffer is at DMA address 0x40000; DMA
 * addresses are 28 bits by default. Every result is one `@@L2 RESULT k=v`.
 *
 *   edutool id DEV                  the id register
 *   edutool fact DEV N              N! computed by the device
 *   edutool irq DEV UIO COUNT       raise COUNT interrupts, counting those
 *                                   that arrive through /dev/UIO (the device
 *                                   bound to uio_pci_generic)
 *   edutool dma DEV BYTES           RAM -> edu buffer -> other RAM, compared
 *                                   byte for byte (buffers below 256 MiB;
 *                                   BYTES 1..4095)
 *   edutool dma-to DEV ADDR BYTES   edu buffer -> DMA address ADDR (a write
 *                                   outside the guest's memory: the host's
 *                                   IOMMU must stop it)
 *   edutool msi DEV VECTOR COUNT    program edu's MSI capability through the
 *                                   config file (fixed delivery to APIC id 0,
 *                                   VECTOR, which no Linux IRQ uses), enable
 *                                   it, read it back, and raise COUNT
 *                                   interrupts, each awaited in /dev/kmsg as
 *                                   the kernel's "No irq handler for vector"
 *   edutool msi-off DEV VECTOR UIO  disable MSI, raise one interrupt: it must
 *                                   come as INTx (through /dev/UIO, the device
 *                                   bound to uio_pci_generic), not on VECTOR
 *
 * DEV is the device's sysfs directory, e.g. /sys/bus/pci/devices/0000:00:02.0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define EDU_BUFFER 0x40000u
/* QEMU 7.2's edu stops the whole machine (hw_error) on a transfer that
 * reaches the buffer's last byte; 4095 bytes is the most it takes. QEMU 9.0
 * fixed its range check (see docs/vfio.md); the limit stays until the rig
 * has tried 4096 under its QEMU 10. */
#define EDU_MAX_COUNT 4095u
#define DMA_LIMIT (256u << 20)

static volatile uint8_t *bar;

static void die(const char *what) {
  perror(what);
  printf("@@L2 RESULT edutool_error=%s\n", what);
  exit(1);
}

static uint32_t rd32(uint32_t off) { return *(volatile uint32_t *)(bar + off); }
static void wr32(uint32_t off, uint32_t v) { *(volatile uint32_t *)(bar + off) = v; }
static uint64_t rd64(uint32_t off) { return *(volatile uint64_t *)(bar + off); }
static void wr64(uint32_t off, uint64_t v) { *(volatile uint64_t *)(bar + off) = v; }

/* Memory decoding and bus mastering on (command register bits 1 and 2). */
static void enable(const char *dev) {
  char path[512];
  snprintf(path, sizeof path, "%s/config", dev);
  int fd = open(path, O_RDWR);
  if (fd < 0) die("open config");
  uint16_t cmd;
  if (pread(fd, &cmd, 2, 4) != 2) die("read command");
  cmd |= 0x6;
  if (pwrite(fd, &cmd, 2, 4) != 2) die("write command");
  close(fd);
}

/* Clears INTx disable (command bit 10), as uio_pci_generic wants. */
static void intx_unmask(const char *dev) {
  char path[512];
  snprintf(path, sizeof path, "%s/config", dev);
  int fd = open(path, O_RDWR);
  if (fd < 0) die("open config");
  uint16_t cmd;
  if (pread(fd, &cmd, 2, 4) != 2) die("read command");
  cmd &= ~0x400;
  if (pwrite(fd, &cmd, 2, 4) != 2) die("write command");
  close(fd);
}

static void map_bar(const char *dev) {
  char path[512];
  enable(dev);
  snprintf(path, sizeof path, "%s/resource0", dev);
  int fd = open(path, O_RDWR | O_SYNC);
  if (fd < 0) die("open resource0");
  void *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) die("mmap resource0");
  bar = p;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Waits (at most 10 s) until `reg & bit` is clear. */
static int wait_clear(uint32_t reg, uint64_t bit, int wide) {
  double until = now() + 10;
  while ((wide ? rd64(reg) : rd32(reg)) & bit) {
    if (now() > until) return -1;
    usleep(1000);
  }
  return 0;
}

/* The physical address of the page holding `p` (locked), from pagemap. */
static uint64_t phys_of(void *p) {
  int fd = open("/proc/self/pagemap", O_RDONLY);
  if (fd < 0) die("open pagemap");
  uint64_t entry, page = (uintptr_t)p / 4096;
  if (pread(fd, &entry, 8, page * 8) != 8) die("read pagemap");
  close(fd);
  if (!(entry & (1ull << 63))) die("page not present");
  return (entry & ((1ull << 55) - 1)) * 4096 + (uintptr_t)p % 4096;
}

/* A locked page-sized buffer whose physical address is below the edu's
 * 28-bit DMA limit (small guests have all their RAM there). */
static uint8_t *dma_page(uint64_t *phys) {
  for (int tries = 0; tries < 64; tries++) {
    uint8_t *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
    if (p == MAP_FAILED) die("mmap buffer");
    memset(p, 0, 4096);
    *phys = phys_of(p);
    if (*phys + 4096 <= DMA_LIMIT) return p;
  }
  die("no page below 256 MiB");
  return NULL;
}

static int dma(uint64_t src, uint64_t dst, uint64_t count, uint64_t to_ram) {
  wr64(0x80, src);
  wr64(0x88, dst);
  wr64(0x90, count);
  wr64(0x98, 1 | (to_ram ? 2 : 0));
  return wait_clear(0x98, 1, 1);
}

/* MSI by hand, from userspace. With no driver owning MSI, the kernel has
 * nothing on the vector: x86's common_interrupt acks it and logs
 * "__common_interrupt: CPU.VECTOR No irq handler for vector" (pr_emerg,
 * rate-limited to 10 in 5 s), which is what shows the MSI arrived. */
#define MSI_ADDRESS 0xfee00000u /* fixed delivery, physical, APIC id 0 */

static int config_fd(const char *dev) {
  char path[512];
  snprintf(path, sizeof path, "%s/config", dev);
  int fd = open(path, O_RDWR);
  if (fd < 0) die("open config");
  return fd;
}

static uint32_t cfg_rd(int fd, int off, int len) {
  uint32_t v = 0;
  if (pread(fd, &v, len, off) != len) die("read config");
  return v;
}

static void cfg_wr(int fd, int off, uint32_t v, int len) {
  if (pwrite(fd, &v, len, off) != len) die("write config");
}

/* The MSI capability's offset, from the capability list. */
static int msi_cap(int fd) {
  if (!(cfg_rd(fd, 6, 2) & 0x10)) return 0;
  int at = cfg_rd(fd, 0x34, 1) & 0xfc;
  for (int hops = 0; at >= 0x40 && hops < 48; hops++) {
    if (cfg_rd(fd, at, 1) == 0x05) return at;
    at = cfg_rd(fd, at + 1, 1) & 0xfc;
  }
  return 0;
}

/* /dev/kmsg from its end: the records logged from now on. */
static int kmsg_open(void) {
  int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
  if (fd < 0) die("open kmsg");
  lseek(fd, 0, SEEK_END);
  return fd;
}

/* Waits up to `secs` for a "No irq handler for vector" record naming
 * `vector`; 1 if one came. */
static int kmsg_wait_vector(int fd, unsigned vector, double secs) {
  char want[64], rec[2048];
  snprintf(want, sizeof want, ".%u No irq handler for vector", vector);
  double until = now() + secs;
  while (now() < until) {
    ssize_t n = read(fd, rec, sizeof rec - 1);
    if (n < 0) {
      if (errno == EPIPE) continue; /* records overwritten: read on */
      if (errno != EAGAIN) die("read kmsg");
      usleep(10000);
      continue;
    }
    rec[n] = 0;
    if (strstr(rec, want)) return 1;
  }
  return 0;
}

static void msi_on(const char *dev, unsigned vector, int count) {
  int fd = config_fd(dev);
  int cap = msi_cap(fd);
  if (!cap) die("no MSI capability");
  uint16_t control = cfg_rd(fd, cap + 2, 2);
  int wide = control & 0x80; /* 64-bit address: data at +12, else +8 */
  int data_at = cap + (wide ? 12 : 8);
  cfg_wr(fd, cap + 4, MSI_ADDRESS, 4);
  if (wide) cfg_wr(fd, cap + 8, 0, 4);
  cfg_wr(fd, data_at, vector, 2);
  cfg_wr(fd, cap + 2, (control & ~0x70) | 1, 2); /* one vector, enabled */
  uint64_t address = cfg_rd(fd, cap + 4, 4);
  if (wide) address |= (uint64_t)cfg_rd(fd, cap + 8, 4) << 32;
  printf("@@L2 RESULT edu_msi_cap=0x%02x\n", cap);
  printf("@@L2 RESULT edu_msi_address=0x%llx\n", (unsigned long long)address);
  printf("@@L2 RESULT edu_msi_data=0x%04x\n", cfg_rd(fd, data_at, 2));
  printf("@@L2 RESULT edu_msi_control=0x%04x\n", cfg_rd(fd, cap + 2, 2));
  close(fd);
  int kmsg = kmsg_open(), got = 0;
  for (int i = 0; i < count; i++) {
    wr32(0x60, 1);
    got += kmsg_wait_vector(kmsg, vector, 5);
    wr32(0x64, rd32(0x24)); /* acknowledge, for the next raise */
  }
  printf("@@L2 RESULT edu_msi_delivered=%d/%d\n", got, count);
}

static void msi_off(const char *dev, unsigned vector, const char *uio_name) {
  char path[64];
  snprintf(path, sizeof path, "/dev/%s", uio_name);
  int uio = open(path, O_RDWR);
  if (uio < 0) die("open uio");
  int fd = config_fd(dev);
  int cap = msi_cap(fd);
  if (!cap) die("no MSI capability");
  cfg_wr(fd, cap + 2, cfg_rd(fd, cap + 2, 2) & ~1u, 2);
  printf("@@L2 RESULT edu_msi_control_off=0x%04x\n", cfg_rd(fd, cap + 2, 2));
  close(fd);
  intx_unmask(dev);
  int kmsg = kmsg_open();
  wr32(0x60, 1);
  struct pollfd pfd = {.fd = uio, .events = POLLIN};
  int intx = poll(&pfd, 1, 5000) == 1;
  uint32_t events;
  if (intx && read(uio, &events, 4) != 4) die("read uio");
  wr32(0x64, rd32(0x24));
  printf("@@L2 RESULT edu_intx_after_msi_off=%d\n", intx);
  printf("@@L2 RESULT edu_msi_off_vector_messages=%d\n", kmsg_wait_vector(kmsg, vector, 2));
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: edutool id|fact|irq|dma|dma-to|msi|msi-off DEV ...\n");
    return 2;
  }
  const char *cmd = argv[1];
  map_bar(argv[2]);
  if (!strcmp(cmd, "id")) {
    printf("@@L2 RESULT edu_id=0x%08x\n", rd32(0x00));
    wr32(0x04, 0x12345678);
    printf("@@L2 RESULT edu_liveness=0x%08x\n", rd32(0x04));
  } else if (!strcmp(cmd, "fact") && argc == 4) {
    wr32(0x08, (uint32_t)strtoul(argv[3], NULL, 0));
    if (wait_clear(0x20, 1, 0)) die("factorial timeout");
    printf("@@L2 RESULT edu_factorial=%u\n", rd32(0x08));
  } else if (!strcmp(cmd, "irq") && argc == 5) {
    char path[64];
    snprintf(path, sizeof path, "/dev/%s", argv[3]);
    int uio = open(path, O_RDWR);
    if (uio < 0) die("open uio");
    int want = atoi(argv[4]), got = 0;
    uint32_t events = 0;
    for (int i = 0; i < want; i++) {
      intx_unmask(argv[2]); /* uio_pci_generic masks INTx at each interrupt */
      wr32(0x60, 1u << (i % 8));
      struct pollfd pfd = {.fd = uio, .events = POLLIN};
      if (poll(&pfd, 1, 5000) != 1) break;
      if (read(uio, &events, 4) != 4) die("read uio");
      got++;
      wr32(0x64, rd32(0x24)); /* acknowledge: the line goes down */
    }
    printf("@@L2 RESULT edu_irqs=%d\n", got);
    printf("@@L2 RESULT edu_uio_events=%u\n", events);
  } else if (!strcmp(cmd, "dma") && argc == 4) {
    uint64_t count = strtoull(argv[3], NULL, 0), src_phys, dst_phys;
    if (count == 0 || count > EDU_MAX_COUNT) die("count must be 1..4095");
    uint8_t *src = dma_page(&src_phys), *dst = dma_page(&dst_phys);
    for (uint64_t i = 0; i < count; i++) src[i] = (uint8_t)(i * 7 + 3);
    memset(dst, 0xee, 4096);
    if (dma(src_phys, EDU_BUFFER, count, 0)) die("DMA to edu timeout");
    if (dma(EDU_BUFFER, dst_phys, count, 1)) die("DMA from edu timeout");
    uint64_t same = 0;
    for (uint64_t i = 0; i < count; i++) same += src[i] == dst[i];
    int untouched = dst[count] == 0xee;
    printf("@@L2 RESULT edu_dma_src=0x%llx\n", (unsigned long long)src_phys);
    printf("@@L2 RESULT edu_dma_same=%llu/%llu\n", (unsigned long long)same, (unsigned long long)count);
    printf("@@L2 RESULT edu_dma_past_end_untouched=%s\n", untouched ? "yes" : "no");
  } else if (!strcmp(cmd, "dma-to") && argc == 5) {
    uint64_t addr = strtoull(argv[3], NULL, 0), count = strtoull(argv[4], NULL, 0);
    if (count == 0 || count > EDU_MAX_COUNT) die("count must be 1..4095");
    int done = dma(EDU_BUFFER, addr, count, 1) == 0;
    printf("@@L2 RESULT edu_dma_to_done=%s\n", done ? "yes" : "no");
  } else if (!strcmp(cmd, "msi") && argc == 5) {
    msi_on(argv[2], (unsigned)strtoul(argv[3], NULL, 0), atoi(argv[4]));
  } else if (!strcmp(cmd, "msi-off") && argc == 5) {
    msi_off(argv[2], (unsigned)strtoul(argv[3], NULL, 0), argv[4]);
  } else {
    fprintf(stderr, "edutool: bad command\n");
    return 2;
  }
  return 0;
}
