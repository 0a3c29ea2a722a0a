"""What a run writes: output names and checks (targets), the writers of each format, DICOM SEG and RT Structure
Set, the preview, and the derived masks of task body."""
