@echo off
rem edgeseg watch folder on a Windows workstation: segments the images that arrive in IN
rem into OUT, and starts it again if it ever stops with an error. Edit the four lines
rem below, then run this file at logon or startup with Task Scheduler (deploy\README.md).
rem A clean stop (Ctrl-C, or Task Scheduler's End) finishes the image in progress first.
setlocal
set "EDGESEG=%LOCALAPPDATA%\edgeseg\venv\Scripts\edgeseg.exe"
set "IN=C:\edgeseg\in"
set "OUT=C:\edgeseg\out"
set "LOG=C:\edgeseg\edgeseg-watch.log"

if not exist "%EDGESEG%" (
    echo edgeseg not found at %EDGESEG%: run install_offline.ps1 first, or fix EDGESEG above.
    exit /b 1
)
if not exist "%IN%" mkdir "%IN%"
if not exist "%OUT%" mkdir "%OUT%"

:run
echo %DATE% %TIME% starting edgeseg watch "%IN%" -o "%OUT%" >> "%LOG%"
"%EDGESEG%" watch "%IN%" -o "%OUT%" --settle 15 >> "%LOG%" 2>&1
set "STATUS=%ERRORLEVEL%"
if "%STATUS%"=="0" exit /b 0
echo %DATE% %TIME% edgeseg watch stopped with status %STATUS%; restarting in 30 s >> "%LOG%"
timeout /t 30 /nobreak > nul
goto run
