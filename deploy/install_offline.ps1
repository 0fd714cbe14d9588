<#
.SYNOPSIS
Install edgeseg from this offline bundle on a Windows machine without internet.

.DESCRIPTION
Checks every file's SHA-256 against SHA256SUMS, creates a virtual environment, installs
from wheelhouse\ only (pip never looks anywhere else), then segments the bundled sample
images as a self-test. The Windows twin of install_offline.sh.

Run it from a PowerShell or cmd window in the bundle folder:
    powershell -ExecutionPolicy Bypass -File install_offline.ps1
    powershell -ExecutionPolicy Bypass -File install_offline.ps1 -Prefix D:\edgeseg -Replace

Exit status: 0 installed and self-tested; 1 refused or failed, nothing usable installed;
3 installed, but the self-test failed (the message says why).

.PARAMETER Prefix
Install into Prefix\venv [default: %LOCALAPPDATA%\edgeseg].
.PARAMETER Python
The Python to build the environment with [default: the py launcher, asked for the version
the bundle was built for (bundle.txt)]; or the full path of a python.exe.
.PARAMETER Replace
Replace an existing Prefix\venv (stop edgeseg-watch first).
.PARAMETER Model
Self-test with this exported model (its .json beside it) instead of the built-in default.
.PARAMETER NoSelfTest
Skip segmenting the sample images.
.PARAMETER VerifyOnly
Only check the bundle's files against SHA256SUMS.
#>
[CmdletBinding()]
param(
    [string]$Prefix = (Join-Path $env:LOCALAPPDATA 'edgeseg'),
    [string]$Python = 'py',
    [switch]$Replace,
    [string]$Model,
    [switch]$NoSelfTest,
    [switch]$VerifyOnly
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3

function Fail([string]$Message, [int]$Code = 1) {
    [Console]::Error.WriteLine("install_offline: $Message")
    exit $Code
}

$Bundle = $PSScriptRoot
$Sums = Join-Path $Bundle 'SHA256SUMS'
if (-not (Test-Path -LiteralPath $Sums)) { Fail "no SHA256SUMS in ${Bundle}: not a complete bundle" }
$Listed = @{}
foreach ($Line in Get-Content -LiteralPath $Sums) {
    if ($Line -notmatch '^([0-9a-f]{64})  (.+)$') { Fail "malformed line in SHA256SUMS: $Line" }
    $Listed[$Matches[2]] = $Matches[1]
}
$Bad = @()
foreach ($Name in $Listed.Keys) {
    $Path = Join-Path $Bundle $Name
    if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) { $Bad += "$Name (missing)"; continue }
    $Hash = (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
    if ($Hash -ne $Listed[$Name]) { $Bad += "$Name (modified)" }
}
if ($Bad) {
    Fail ("these files do not match SHA256SUMS: the bundle was damaged or modified after it " +
        "was built; copy it again from the original: " + ($Bad -join ', '))
}
# A wheel or model not in the list is refused too: pip could install it instead of ours.
foreach ($Folder in 'wheelhouse', 'models') {
    $Dir = Join-Path $Bundle $Folder
    if (-not (Test-Path -LiteralPath $Dir)) { continue }
    foreach ($File in Get-ChildItem -LiteralPath $Dir -File -Recurse -Force) {
        $Relative = $File.FullName.Substring($Bundle.Length + 1).Replace('\', '/')
        if (-not $Listed.ContainsKey($Relative)) { $Bad += $Relative }
    }
}
if ($Bad) { Fail ("files not listed in SHA256SUMS (remove them or copy the bundle again): " + ($Bad -join ', ')) }
Write-Host "bundle verified: $($Listed.Count) files match SHA256SUMS"
if ($VerifyOnly) { exit 0 }

$Info = @{}
foreach ($Line in Get-Content -LiteralPath (Join-Path $Bundle 'bundle.txt')) {
    $Key, $Value = $Line -split '=', 2
    $Info[$Key] = $Value
}
$Want = $Info['python']
$PythonArgs = @()
if ($Python -eq 'py') { $PythonArgs = @("-$Want") }
try {
    $Have = & $Python @PythonArgs -c "import sys; print('%d.%d' % sys.version_info[:2])"
} catch {
    Fail "cannot run '$Python': install Python $Want or pass -Python C:\path\to\python.exe"
}
if ($LASTEXITCODE -ne 0 -or $Have -ne $Want) {
    Fail ("this bundle is for Python $Want, but '$Python $PythonArgs' gives '$Have': install " +
        "Python $Want (the python.org installer works offline) or pass -Python C:\path\to\python.exe")
}

$Venv = Join-Path $Prefix 'venv'
if (Test-Path -LiteralPath $Venv) {
    if (-not $Replace) { Fail "$Venv exists: stop what runs from it (edgeseg-watch), then add -Replace" }
    Remove-Item -LiteralPath $Venv -Recurse -Force
}
New-Item -ItemType Directory -Force -Path $Prefix | Out-Null
# --without-pip: pip itself runs from its wheel in the wheelhouse.
& $Python @PythonArgs -m venv --without-pip $Venv
if ($LASTEXITCODE -ne 0) { Fail "could not create the virtual environment $Venv" }
$Wheelhouse = Join-Path $Bundle 'wheelhouse'
$PipWheel = Get-ChildItem -LiteralPath $Wheelhouse -Filter 'pip-*.whl' | Select-Object -First 1
if (-not $PipWheel) { Fail "no pip wheel in $Wheelhouse" }
$VenvPython = Join-Path $Venv 'Scripts\python.exe'
# --no-index and no configuration ('nul' is os.devnull here): only the wheelhouse is used.
$env:PIP_CONFIG_FILE = 'nul'
& $VenvPython (Join-Path $PipWheel.FullName 'pip') install --isolated --no-index `
    --find-links $Wheelhouse --no-cache-dir --no-warn-script-location `
    --disable-pip-version-check edgeseg
if ($LASTEXITCODE -ne 0) {
    Remove-Item -LiteralPath $Venv -Recurse -Force
    Fail ("pip could not install edgeseg from the wheelhouse alone (see above): the bundle " +
        "was built for another platform or Python ($($Info['platforms']))")
}
# The built-in model stays read-only.
Get-ChildItem -LiteralPath (Join-Path $Venv 'Lib\site-packages\edgeseg\models') -File |
    ForEach-Object { $_.IsReadOnly = $true }
$Edgeseg = Join-Path $Venv 'Scripts\edgeseg.exe'
Write-Host "installed: $Edgeseg"

if (-not $NoSelfTest) {
    $Out = Join-Path ([IO.Path]::GetTempPath()) ('edgeseg-selftest-' + [guid]::NewGuid())
    $ModelArgs = @()
    if ($Model) { $ModelArgs = @('--model', (Resolve-Path -LiteralPath $Model).Path) }
    Write-Host "self-test: edgeseg segment --samples $ModelArgs"
    & $Edgeseg segment --samples -o $Out @ModelArgs
    $Passed = ($LASTEXITCODE -eq 0) -and
        @(Get-ChildItem -LiteralPath $Out -Filter '*_labels.*' -ErrorAction SilentlyContinue).Count -gt 0
    Remove-Item -LiteralPath $Out -Recurse -Force -ErrorAction SilentlyContinue
    if (-not $Passed) {
        Fail ("SELF-TEST FAILED: edgeseg is installed in $Venv, but segmenting the sample " +
            "images failed (see above). 'no built-in model installed' means this bundle was " +
            "built without the default model: give one with -Model ARTIFACT (here and " +
            "--model to every edgeseg command).") 3
    }
    Write-Host "self-test passed"
}
Write-Host "done. Run $Edgeseg --help (or add $Venv\Scripts to PATH)."
