//! The command line, spelled as qemu-img spells it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// vdisk: create, inspect and convert disk images (qemu-img's commands), and reach the
/// filesystems inside them.
#[derive(Debug, Parser)]
#[command(name = "vdisk", version, about, propagate_version = true)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Text for people, as qemu-img prints it.
    Human,
    /// JSON with qemu-img's schema.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new disk image.
    Create(CreateArgs),
    /// Show information about a disk image.
    Info(InfoArgs),
    /// Show where the guest data of an image (and its backing chain) is stored.
    Map(MapArgs),
    /// Check whether two images have the same guest content.
    Compare(CompareArgs),
    /// Copy an image's guest content into a new image.
    Convert(ConvertArgs),
    /// Check an image for consistency, and repair it with -r (qemu-img check).
    Check(crate::cmd::check::CheckArgs),
    /// List, create, apply or delete internal snapshots (qemu-img snapshot).
    Snapshot(crate::cmd::snapshot::SnapshotArgs),
    /// Change the virtual size of an image (qemu-img resize).
    Resize(crate::cmd::resize::ResizeArgs),
    /// Change format options of an existing image (qemu-img amend).
    Amend(crate::cmd::amend::AmendArgs),
    /// Change the backing file of an image, keeping its guest content (qemu-img rebase).
    Rebase(crate::cmd::rebase::RebaseArgs),
    /// Write an overlay's data into its backing file (qemu-img commit).
    Commit(crate::cmd::commit::CommitArgs),
    /// Compute the file size a new image needs (qemu-img measure).
    Measure(crate::cmd::measure::MeasureArgs),
    /// Copy part of an image into a new image (qemu-img dd).
    Dd(crate::cmd::dd::DdArgs),
    /// Serve an image over the network block device protocol (qemu-nbd).
    Nbd(crate::cmd::nbd::NbdArgs),
    /// Mount guest filesystems on a host directory through FUSE (guestmount).
    Mount(crate::cmd::guest::mount::MountArgs),
    /// Unmount a `vdisk mount` and wait for its server to exit (guestunmount).
    Umount(crate::cmd::guest::umount::UmountArgs),
    /// List the guest's filesystems, partitions, disks and LVM volumes (virt-filesystems).
    Filesystems(crate::cmd::guest::filesystems::FilesystemsArgs),
    /// List a guest directory (virt-ls).
    Ls(crate::cmd::guest::ls::LsArgs),
    /// Print guest files (virt-cat).
    Cat(crate::cmd::guest::cat::CatArgs),
    /// Copy guest files and directories to the host (virt-copy-out).
    CopyOut(crate::cmd::guest::copy_out::CopyOutArgs),
    /// Write a guest file from stdin or --from HOSTFILE, without FUSE.
    Write(crate::cmd::guest::write::WriteArgs),
    /// Edit a guest file with s/// expressions or $EDITOR, without FUSE (virt-edit).
    Edit(crate::cmd::guest::edit::EditArgs),
    /// Copy host files and directories into the guest, without FUSE (virt-copy-in).
    CopyIn(crate::cmd::guest::copy_in::CopyInArgs),
    /// Remove guest files (-r: directories too), without FUSE.
    Rm(crate::cmd::guest::files::RmArgs),
    /// Make guest directories, without FUSE.
    Mkdir(crate::cmd::guest::files::MkdirArgs),
    /// Set (or clear, with "") a guest filesystem's label, as e2label, xfs_admin -L and fatlabel.
    SetLabel(crate::cmd::guest::files::SetLabelArgs),
    /// Change the permission bits of guest files, without FUSE.
    Chmod(crate::cmd::guest::files::ChmodArgs),
    /// Change the owner and group of guest files, without FUSE.
    Chown(crate::cmd::guest::files::ChownArgs),
    /// Make a guest symlink (-s) or hard link, without FUSE.
    Ln(crate::cmd::guest::files::LnArgs),
    /// Show the guest's operating system: root, distribution, version, mountpoints
    /// (virt-inspector).
    Inspect(crate::cmd::guest::inspect::InspectArgs),
    /// Customize a guest without booting it: virt-customize's file edits, and network
    /// settings (virt-customize).
    Customize(crate::cmd::customize::CustomizeArgs),
    /// Reset a guest for cloning: virt-sysprep's file-edit operations (virt-sysprep).
    Sysprep(crate::cmd::customize::CustomizeArgs),
    /// Make a new VM disk from a template: a qcow2 overlay, sysprep's defaults and the given
    /// customize operations; the template is never written.
    Clone(crate::cmd::customize::CustomizeArgs),
}

/// `vdisk create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Quiet: print nothing on success.
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Image format to create.
    #[arg(short = 'f', value_name = "FMT", default_value = "raw")]
    pub format: String,
    /// Format options, comma-separated key=value ("-o help" lists them); may repeat.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Backing file of the new image.
    #[arg(short = 'b', value_name = "BACKING_FILE")]
    pub backing: Option<String>,
    /// Format of the backing file.
    #[arg(short = 'F', value_name = "BACKING_FMT")]
    pub backing_format: Option<String>,
    /// Do not open the backing file (its size must then be given).
    #[arg(short = 'u')]
    pub unsafe_backing: bool,
    /// The image to create (not needed with "-o help").
    pub filename: Option<PathBuf>,
    /// Virtual size in bytes, or with a suffix k, K, M, G, T, P, E (binary units).
    pub size: Option<String>,
}

/// `vdisk info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Image format (probed when omitted, with a warning).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human", value_name = "OFMT")]
    pub output: OutputFormat,
    /// Show every image of the backing chain.
    #[arg(long)]
    pub backing_chain: bool,
    /// Open the image read-only without taking locks, even if another process writes it.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The image.
    pub filename: PathBuf,
}

/// `vdisk map`.
#[derive(Debug, clap::Args)]
pub struct MapArgs {
    /// Image format (probed when omitted, with a warning).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human", value_name = "OFMT")]
    pub output: OutputFormat,
    /// First guest byte to report.
    #[arg(long, value_name = "OFFSET", default_value = "0")]
    pub start_offset: String,
    /// Report at most this many bytes.
    #[arg(long, value_name = "LENGTH")]
    pub max_length: Option<String>,
    /// Open the image read-only without taking locks.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The image.
    pub filename: PathBuf,
}

/// `vdisk compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Format of the first image.
    #[arg(short = 'f', value_name = "FMT")]
    pub format_a: Option<String>,
    /// Format of the second image.
    #[arg(short = 'F', value_name = "FMT")]
    pub format_b: Option<String>,
    /// Strict: sizes and allocation must match as well as content.
    #[arg(short = 's')]
    pub strict: bool,
    /// Show a progress bar on stderr.
    #[arg(short = 'p')]
    pub progress: bool,
    /// Quiet: print nothing, report by exit status only.
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Open the images read-only without taking locks.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The first image.
    pub a: PathBuf,
    /// The second image.
    pub b: PathBuf,
}

/// `vdisk convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Show a progress bar on stderr.
    #[arg(short = 'p')]
    pub progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Source format (probed when omitted, with a warning).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Output format.
    #[arg(short = 'O', value_name = "OUTPUT_FMT", default_value = "raw")]
    pub output_format: String,
    /// Options of the new image, comma-separated key=value, as `create` takes them ("-o help"
    /// lists them); may repeat.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Write data clusters compressed (qcow2 targets; compression_type=zlib|zstd).
    #[arg(short = 'c')]
    pub compress: bool,
    /// Give the new image this backing file and copy only what the source's top image
    /// allocates (the rest reads through the backing file).
    #[arg(short = 'B', visible_short_alias = 'b', value_name = "BACKING_FILE")]
    pub backing: Option<String>,
    /// Format of the backing file given with -B (required, as in qemu-img).
    #[arg(short = 'F', value_name = "BACKING_FMT")]
    pub backing_format: Option<String>,
    /// Zero runs at least this long are left as holes (default 4k); 0 allocates everything.
    #[arg(short = 'S', value_name = "SPARSE_SIZE")]
    pub sparse_size: Option<String>,
    /// Convert the content as of this internal snapshot ("snapshot.id=N", "snapshot.name=X",
    /// or an id or name).
    #[arg(short = 'l', value_name = "SNAPSHOT_PARAM")]
    pub snapshot: Option<String>,
    /// Open the source read-only without taking locks.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Worker threads (default: one per core).
    #[arg(short = 'm', value_name = "NUM_COROUTINES")]
    pub workers: Option<usize>,
    /// Allow out-of-order writes: the same content, but a new qcow2 image's clusters are not
    /// laid out in guest order.
    #[arg(short = 'W')]
    pub out_of_order: bool,
    /// Do not create the target: write into the existing image, which must be large enough.
    #[arg(short = 'n')]
    pub no_create: bool,
    /// With -n: the existing target already reads as zeros, so zero ranges are not written.
    #[arg(long)]
    pub target_is_zero: bool,
    /// The source images (concatenated, in order), then the image to write. Options may
    /// stand between them, as qemu-img's getopt allows.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}
